// The stage list of a work item (see stages.h).
#include "core/stages.h"

#include <algorithm>
#include <chrono>

#include "mla/stage_times.h"
#include "mla/status.h"

namespace mla {

static_assert(kNumStages == StageTimes::kStages);

const char* stage_name(Stage s) {
  switch (s) {
    case Stage::QK: return "QK";
    case Stage::QK_nope: return "QK_nope";
    case Stage::QK_rope: return "QK_rope";
    case Stage::SM: return "SM";
    case Stage::PV: return "PV";
    case Stage::UP: return "UP";
  }
  return "?";
}

const char* stage_index_name(int i) {
  return i >= 0 && i < kNumStages ? stage_name(Stage(i)) : "?";
}

Unit stage_unit(Stage s) {
  switch (s) {
    case Stage::QK:
    case Stage::QK_nope:
    case Stage::QK_rope:
    case Stage::PV: return Unit::matrix;
    case Stage::SM:
    case Stage::UP: return Unit::vector;
  }
  return Unit::vector;
}

std::vector<StageOp> stage_list(const StageListInput& in) {
  MLA_CHECK(in.rows >= 1, "stage_list: rows = " << in.rows << " must be at least 1");
  MLA_CHECK(in.chunk >= 1, "stage_list: chunk = " << in.chunk << " must be at least 1");
  MLA_CHECK(in.tile >= 1, "stage_list: tile = " << in.tile << " must be at least 1");
  MLA_CHECK(in.kv_begin >= 0 && in.kv_begin <= in.kv_end,
            "stage_list: KV range [" << in.kv_begin << ", " << in.kv_end << ") is invalid");
  const int64_t T = int64_t(in.chunk) * in.tile;
  std::vector<StageOp> ops;
  int32_t step = 0;
  for (int64_t t0 = in.kv_begin; t0 < in.kv_end; t0 += T, ++step) {
    const int32_t n = int32_t(std::min<int64_t>(T, in.kv_end - t0));
    auto add = [&](Stage s) { ops.push_back({s, step, in.rows, n}); };
    if (in.split_qk) {
      add(Stage::QK_nope);
      add(Stage::QK_rope);
    } else {
      add(Stage::QK);
    }
    add(Stage::SM);
    add(Stage::PV);
    add(Stage::UP);
  }
  return ops;
}

namespace {
int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
}  // namespace

void StageRecorder::add(const StageOp& op, int64_t ns) {
  ns_[int(op.stage)] += ns;
  ++count_[int(op.stage)];
  if (keep_ops_) ops_.push_back(op);
}

void StageRecorder::clear() {
  ops_.clear();
  std::fill(ns_, ns_ + kNumStages, 0);
  std::fill(count_, count_ + kNumStages, 0);
}

void StageMarks::start(int step, int tokens) {
  step_ = step;
  tokens_ = tokens;
  t_ = now_ns();
}

void StageMarks::record(Stage s) {
  const int64_t t = now_ns();
  rec_->add(StageOp{s, step_, rows_, tokens_}, t - t_);
  t_ = t;
}

}  // namespace mla
