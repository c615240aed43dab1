// Work, bytes and floor time of a decode shape (see perf_model.h).
#include "harness/perf_model.h"

#include <algorithm>
#include <fstream>
#include <string>

#include "mla/status.h"

namespace mla::bench {

double flops(const Shape& s) {
  return decode_flops(int64_t(s.heads) * s.q_len * s.batch, s.k);
}

double kv_bytes_per_token(KvDType kv, KvScale scale) {
  if (kv == KvDType::fp8) return kFp8TokenBytes;
  if (kv != KvDType::int8) return kQkDim * 2.0;
  return kLatentDim + kRopeDim * 2.0 + 4.0 * kv_token_scales(scale);
}

double kv_bytes(const Shape& s) {
  return double(s.batch) * s.k * kv_bytes_per_token(s.kv, s.scale);
}

Floor floor_time(const Shape& s, const Ceilings& c, int64_t l3_bytes) {
  auto need = [&](double rate, const char* what) {
    MLA_CHECK(rate > 0, "ceilings for " << c.threads << " threads: " << what << " = " << rate
                                        << " (must be positive)");
    return rate * 1e9;
  };
  const double rk = double(s.heads) * s.q_len * double(s.k) * s.batch;  // rows x keys
  Floor f;
  switch (s.kv) {
    case KvDType::int8:
      f.compute_s = 2 * rk * 2 * kLatentDim / need(c.int8_dot_gops, "int8_dot_gops") +
                    2 * rk * kRopeDim / need(c.bf16_dot_gflops, "bf16_dot_gflops");
      break;
    case KvDType::bf16:
    case KvDType::fp8:  // e4m3 widened to bf16 in registers: the bf16 dot products' floor
      f.compute_s = rk * kFlopsPerKeyRow / need(c.bf16_dot_gflops, "bf16_dot_gflops");
      break;
    case KvDType::fp16:
      f.compute_s = rk * kFlopsPerKeyRow / need(c.fp32_fma_gflops, "fp32_fma_gflops");
      break;
  }
  const bool tiles = c.amx_int8_gops > 0 && c.amx_bf16_gflops > 0 && s.kv != KvDType::fp16;
  if (tiles) {
    const double tile_s =
        s.kv == KvDType::int8
            ? 2 * rk * 2 * kLatentDim / (c.amx_int8_gops * 1e9) +
                  2 * rk * kRopeDim / (c.amx_bf16_gflops * 1e9)
            : rk * kFlopsPerKeyRow / (c.amx_bf16_gflops * 1e9);
    const double vector_s = rk / need(c.exp_gelems, "exp_gelems");
    f.compute_s = std::max(tile_s, vector_s);
    f.unit = tile_s >= vector_s ? "tile" : "vector";
  }
  const double bytes = kv_bytes(s);
  const bool in_l3 = l3_bytes > 0 && bytes <= double(l3_bytes) && c.read_bw_l3_gbs > 0;
  f.bw_level = in_l3 ? "l3" : "mem";
  f.bw_gbs = in_l3 ? c.read_bw_l3_gbs : c.read_bw_mem_gbs;
  f.bandwidth_s = bytes / need(f.bw_gbs, in_l3 ? "read_bw_l3_gbs" : "read_bw_mem_gbs");
  f.floor_s = std::max(f.compute_s, f.bandwidth_s);
  f.compute_bound = f.compute_s >= f.bandwidth_s;
  return f;
}

int64_t l3_cache_bytes() {
  for (int i = 0; i < 8; ++i) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i) + "/";
    std::ifstream level(dir + "level"), size(dir + "size");
    int lv = 0;
    std::string sz;
    if (!(level >> lv) || !(size >> sz)) continue;
    if (lv != 3 || sz.empty()) continue;
    int64_t n = 0;
    size_t k = 0;
    while (k < sz.size() && sz[k] >= '0' && sz[k] <= '9') n = n * 10 + (sz[k++] - '0');
    const char unit = k < sz.size() ? sz[k] : 'B';
    if (unit == 'K') n <<= 10;
    if (unit == 'M') n <<= 20;
    if (unit == 'G') n <<= 30;
    return n;
  }
  return 0;
}

}  // namespace mla::bench
