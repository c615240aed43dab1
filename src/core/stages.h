// The pipeline-stage vocabulary (DESIGN §4), one header for the kernels, their stage timers and the
// pipeline simulator, so the simulator runs exactly the schedule the CPU kernels run.
//
// One work item of the plan (a sequence, a group of heads, a KV range [kv_begin, kv_end)) is walked
// in steps of `chunk` tiles of `tile` tokens, starting at kv_begin; the last step may be short.
// Every step runs, in order:
//
//   bf16 / fp16 cache:   QK                 SM   PV   UP
//   int8 cache:          QK_nope  QK_rope   SM   PV   UP
//                        (int32)  (fp32: a second sync, so the vector side can start early)
//
// QK and PV are matrix products (the accelerator's cube unit), SM and UP vector work.
#pragma once

#include <cstdint>
#include <vector>

namespace mla {

enum class Stage : uint8_t { QK, QK_nope, QK_rope, SM, PV, UP };
constexpr int kNumStages = 6;  // = StageTimes::kStages (mla/stage_times.h)

const char* stage_name(Stage s);  // "QK", "QK_nope", ...

// The unit of an accelerator core that runs the stage (DESIGN §8).
enum class Unit : uint8_t { matrix, vector };
Unit stage_unit(Stage s);

// One stage of one step of a work item.
struct StageOp {
  Stage stage;
  int32_t step;    // index of the step within the work item, from 0
  int32_t rows;    // query rows of the item (its query tokens x its heads)
  int32_t tokens;  // KV tokens the step covers (chunk * tile, or fewer in the last step)
  bool operator==(const StageOp&) const = default;
};

struct StageListInput {
  bool split_qk = false;  // int8 cache: QK split into QK_nope and QK_rope
  int rows = 0;           // >= 1
  int kv_begin = 0, kv_end = 0;  // kv_begin <= kv_end
  int chunk = 4;          // tiles per step, >= 1
  int tile = 64;          // tokens per tile (kKvTile), >= 1
};

// The stages one work item runs, step by step, in execution order. An empty KV range runs nothing.
std::vector<StageOp> stage_list(const StageListInput& in);

// What a kernel ran: each stage of each step as it finished, with its time. Kernels report to one
// through StageMarks; tests compare ops() with stage_list, benchmarks read the per-stage sums.
class StageRecorder {
 public:
  explicit StageRecorder(bool keep_ops = false) : keep_ops_(keep_ops) {}
  void add(const StageOp& op, int64_t ns);
  const std::vector<StageOp>& ops() const { return ops_; }  // only with keep_ops
  int64_t ns(Stage s) const { return ns_[int(s)]; }
  int64_t count(Stage s) const { return count_[int(s)]; }
  void clear();

 private:
  bool keep_ops_;
  std::vector<StageOp> ops_;
  int64_t ns_[kNumStages] = {}, count_[kNumStages] = {};
};

// A kernel's stage markers for one work item: step() at the start of each step, done(s) as each
// stage ends (the time since the previous mark goes to s). Without a recorder each mark is one
// test of a null pointer, so the markers stay compiled in (bench/bench_decode.cc measures both).
class StageMarks {
 public:
  StageMarks(StageRecorder* rec, int rows) : rec_(rec), rows_(rows) {}
  void step(int step, int tokens) {
    if (rec_) [[unlikely]] start(step, tokens);
  }
  void done(Stage s) {
    if (rec_) [[unlikely]] record(s);
  }

 private:
  void start(int step, int tokens);
  void record(Stage s);
  StageRecorder* rec_;
  int32_t rows_, step_ = 0, tokens_ = 0;
  int64_t t_ = 0;
};

}  // namespace mla
