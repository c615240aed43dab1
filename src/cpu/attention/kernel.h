// The contract between the decode driver and the attention kernels (DESIGN §4).
//
// A kernel runs one work item of the plan: sequence `seq`, heads [head_begin, head_end), cache
// positions [kv_begin, kv_end). All query tokens and heads of the item are packed as the rows of
// one matrix, row r = i * nh + (h - head_begin) for query token i < q_len_of(p, seq), so each key
// is loaded once for all of them. The item's KV range is walked in steps of `chunk` tiles of
// kKvTile tokens; every step runs the stages of core/stages.h.
//
// The kernel writes, for each row it owns, the softmax-normalized output of its KV range and the
// natural-log lse; a row that sees no key of the range (causal mask) writes o = 0, lse = -inf.
// For an unsplit item the outputs are the final o/lse; for a split item they are partial buffers
// that the combine merges. Padding rows (i >= q_len_of) are not the kernel's business.
//
// Tokens the item does not own are never read: tails of chunks past kv_end are zero-filled in
// the kernel's scratch and masked, so garbage (NaN) in unused cache slots cannot leak.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/stages.h"
#include "mla/attention.h"
#include "mla/cache.h"

namespace mla::cpu {

struct KernelArgs {
  const DecodeParams* p = nullptr;
  const CacheView* cache = nullptr;
  const uint16_t* q = nullptr;  // [batch, q_len, H, 576]: bf16 bits (bf16/int8 caches), f16 (fp16)
  int seq = 0;
  int head_begin = 0, head_end = 0;
  int kv_begin = 0, kv_end = 0;  // 0 <= kv_begin < kv_end <= seq_lens[seq]
  // Row (i, h): o + i * o_stride_i + (h - head_begin) * o_stride_h -> 512 floats,
  //             lse + i * lse_stride_i + (h - head_begin) * lse_stride_h.
  float* o = nullptr;
  int64_t o_stride_i = 0, o_stride_h = 0;
  float* lse = nullptr;
  int64_t lse_stride_i = 0, lse_stride_h = 0;
  int chunk = 4;  // tiles of kKvTile tokens per step, >= 1
  UpForm up = UpForm::resident;
  StageRecorder* stages = nullptr;  // receives each stage as it ends (tests, stage timing)
};

// Per-worker scratch: 64-byte aligned, grows on demand, never shrinks, contents undefined.
class Scratch {
 public:
  void* get(size_t bytes) {
    if (buf_.size() < bytes) buf_.resize(bytes);
    return buf_.data();
  }

 private:
  AlignedVec<unsigned char> buf_;
};

// Carves one scratch buffer into 64-byte aligned arrays; a first pass with a null base sizes it.
class ScratchCarver {
 public:
  explicit ScratchCarver(unsigned char* base) : base_(base) {}
  template <class T>
  T* take(size_t n) {
    T* p = reinterpret_cast<T*>(base_ + off_);
    off_ += (n * sizeof(T) + 63) & ~size_t(63);
    return p;
  }
  size_t used() const { return off_; }

 private:
  unsigned char* base_;
  size_t off_ = 0;
};

using KernelFn = void (*)(const KernelArgs&, Scratch&);
// The stages the kernel runs for a work item of `rows` query rows over [kv_begin, kv_end), in
// order, as its StageMarks report them (tests/test_stages.cc checks that).
using KernelStagesFn = std::vector<StageOp> (*)(int rows, int kv_begin, int kv_end, int chunk);

struct KernelInfo {
  const char* name;  // dtype, ISA: decode_i8_avx512vnni
  KvDType kv;
  bool portable;         // plain C++, runs anywhere
  Isa isa;               // portable, avx512, avx2, amx or amx_emu: what --isa forces it by
  bool (*supported)();   // does this CPU have the instructions?
  KernelFn run;
  KernelStagesFn stages;
  bool group_scales = false;  // int8: also runs the group32/64/128 scale modes
};

// Whether kernel k runs a cache in this scale mode (int8 group modes need group_scales).
inline bool kernel_runs(const KernelInfo& k, KvDType kv, KvScale scale) {
  if (k.kv != kv) return false;
  const int g = kv_scale_group(scale);
  return kv != KvDType::int8 || g == 0 || g == kLatentDim || k.group_scales;
}

// The canonical stage list (core/stages.h's stage_list, tile kKvTile): what the kernels that take
// all rows of an item through each step run; split_qk: QK_nope then QK_rope.
std::vector<StageOp> item_stages(int rows, int kv_begin, int kv_end, int chunk);
std::vector<StageOp> item_stages_split_qk(int rows, int kv_begin, int kv_end, int chunk);

// Every kernel, portable ones included; tests and benchmarks iterate over it.
const std::vector<KernelInfo>& kernel_registry();
// The fastest supported kernel for a cache format (Isa::best), the kernel of the forced ISA
// (throws when this CPU lacks its instructions), or the one named (which must exist, be supported
// by this CPU and match the format). `scale`: the int8 cache's scale mode (a kernel without
// group_scales is skipped, or refused by name, for the group modes).
const KernelInfo& select_kernel(KvDType kv, Isa isa, const char* name = nullptr,
                                KvScale scale = KvScale::token);

// Cache slot of position `pos` of sequence `b`.
inline int64_t slot_of(const DecodeParams& p, int block_size, int b, int pos) {
  return int64_t(p.block_table[int64_t(b) * p.max_blocks_per_seq + pos / block_size]) *
             block_size + pos % block_size;
}

// The kernels, named by their ids; an ISA kernel lives in the file of its name (isa.h), but for
// the fp8 AMX kernels, which share the bf16 ones' files (decode_bf16_avx512amx{,emu}.cc).
extern const KernelInfo decode_bf16_portable;
extern const KernelInfo decode_f16_portable;
extern const KernelInfo decode_i8_portable;
extern const KernelInfo decode_fp8_portable;
extern const KernelInfo decode_bf16_avx512bf16;
extern const KernelInfo decode_fp8_avx512bf16;
extern const KernelInfo decode_f16_avx512f;
extern const KernelInfo decode_i8_avx512vnni;
extern const KernelInfo decode_i8_avx512amx;
extern const KernelInfo decode_i8_avx512amxemu;
extern const KernelInfo decode_bf16_avx512amx;
extern const KernelInfo decode_bf16_avx512amxemu;
extern const KernelInfo decode_fp8_avx512amx;
extern const KernelInfo decode_fp8_avx512amxemu;

// One AMX tile instruction (op 0: tdpbssd, 1: tdpbusd, 2: tdpbf16ps) on 16 x 64-byte buffers, c
// updated: the instruction itself (call only where cpu_has_amx_set) and its emulation, which
// the AMX kernel's emulated build runs (tests/test_amx.cc holds one to the other).
void amx_tile_op_hw(int op, void* c, const void* a, const void* b);
void amx_tile_op_emu(int op, void* c, const void* a, const void* b);
extern const KernelInfo decode_bf16_avx2;
extern const KernelInfo decode_f16_avx2;
extern const KernelInfo decode_i8_avx2;
extern const KernelInfo decode_i8_avx2vnni;

}  // namespace mla::cpu
