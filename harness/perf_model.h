// The performance model of DESIGN §7: the work of a decode shape and the shortest time the
// machine's measured ceilings allow for it (the "floor"), so every benchmark can print the
// fraction of the machine it reached: ceiling_fraction = floor / measured time.
//
// Work per sequence: every query row (H heads x q_len tokens) meets every one of the k keys
// (the causal mask hides at most q_len - 1 of them; ignored, as the issue counts) in
//   QK  576 multiply-adds   (512 latent + 64 rope)
//   PV  512 multiply-adds   (the value is the latent)
// so flops = 2 * H * q_len * k * 1088, counting a multiply-add as 2.
//
// Compute floor per cache format, with the instructions each format's kernel uses:
//   int8   QK latent and PV as int8 dot products, QK rope in bf16:
//          2*rows*k*1024 / int8_dot_gops + 2*rows*k*64 / bf16_dot_gflops
//   bf16   2*rows*k*1088 / bf16_dot_gflops
//   fp16   2*rows*k*1088 / fp32_fma_gflops   (converted to fp32 in registers)
// Bandwidth floor: the cache bytes read once, per token 576*2 (bf16/fp16) or 512 + 64*2 + 4
// (int8: latent, bf16 rope, fp32 token scale; tensor/channel scales are not per token), over the
// memory read bandwidth, or over the L3 read bandwidth when all of it fits in the L3 (the
// benchmark runs the same case over and over, so a cache that fits stays there). The queries and
// outputs (a few hundred KB) are left out. floor = max(compute floor, bandwidth floor).
//
// On a CPU with a tile unit (ceilings with amx_int8_gops > 0: AMX, docs/DESIGN.md §10) the floor
// is the machine's, whichever kernel runs: the compute floor is the larger of
//   tile time    int8: 2*rows*k*1024 / amx_int8_gops + 2*rows*k*64 / amx_bf16_gflops;
//                bf16 / fp8: 2*rows*k*1088 / amx_bf16_gflops (fp16 keeps the vector floor)
//   vector time  rows*k / exp_gelems: one exp2 per score, the least the softmax does
// and `unit` says which ("tile" or "vector"; "vector units" on CPUs without tiles).
#pragma once

#include <cstdint>
#include <string>

#include "roofline/ceilings.h"
#include "mla/attention.h"
#include "mla/cache.h"

namespace mla::bench {

struct Shape {
  int batch = 1;
  int k = 4096;  // keys per sequence
  int heads = 128;
  int q_len = 2;
  KvDType kv = KvDType::int8;
  KvScale scale = KvScale::token;
};

using mla::kFlopsPerKeyRow;  // the library's flop count (mla/attention.h)

double flops(const Shape& s);  // 2 * H * q_len * k * 1088 * batch
double kv_bytes_per_token(KvDType kv, KvScale scale);
double kv_bytes(const Shape& s);  // batch * k * kv_bytes_per_token

struct Floor {
  double compute_s = 0;
  double bandwidth_s = 0;
  double floor_s = 0;  // max of the two
  bool compute_bound = true;
  std::string unit = "vector units";  // what sets compute_s: "tile", "vector" or "vector units"
  std::string bw_level;  // "mem" or "l3": which read bandwidth set bandwidth_s
  double bw_gbs = 0;
};

// l3_bytes: the L3 size (0 = unknown: use the memory bandwidth). Throws mla::Error when a needed
// ceiling is not positive.
Floor floor_time(const Shape& s, const Ceilings& c, int64_t l3_bytes);

// The last-level (L3) cache size from /sys/devices/system/cpu/cpu0/cache; 0 if unknown.
int64_t l3_cache_bytes();

}  // namespace mla::bench
