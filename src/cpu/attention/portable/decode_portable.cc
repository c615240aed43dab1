// Portable kernels for the four cache formats: plain C++ that the compiler vectorizes for the
// baseline target. The dot products' reductions are marked `omp simd` (built with -fopenmp-simd):
// without it GCC keeps a float sum in order, scalar, and the fp kernels ran 4x slower.
// They run the same stages and the same arithmetic as the AVX-512 kernels (int8: integer S_nope
// and P.V, per-row query scales, P quantized against each row's largest value within the step,
// the largest applied exactly; with group scales one S_nope term and one quantized P per group;
// fp8: each key widened to bf16(e4m3 x its tile's scale), exact for FlashMLA's power-of-two
// scales, then the bf16 arithmetic), so forcing them gives the same answers within tolerance.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "cpu/attention/kernel.h"
#include "cpu/attention/quantize.h"
#include "cpu/attention/softmax_state.h"
#include "mla/dtype.h"

namespace mla::cpu {
namespace {

inline float to_f32(KvDType kv, uint16_t h) {
  return kv == KvDType::fp16 ? f16_to_f32(h) : bf16_to_f32(h);
}

template <KvDType KV>
void run(const KernelArgs& a, Scratch& scratch) {
  constexpr bool kInt8 = KV == KvDType::int8;
  constexpr bool kFp8 = KV == KvDType::fp8;
  const DecodeParams& p = *a.p;
  const CacheView& cache = *a.cache;
  const int nh = a.head_end - a.head_begin;
  const int ql = q_len_of(p, a.seq);
  const int R = ql * nh;
  const int T = a.chunk * kKvTile;
  const int bs = cache.block_size();
  const KvScale mode = cache.scale_mode();
  // int8 per-token scales of a key: token mode 1, group modes 512/group. ng groups of gs
  // channels each; the static modes use one "group".
  const bool per_token = kInt8 && kv_token_scales(mode) > 0;
  const int ng = per_token ? kv_token_scales(mode) : 1;
  const int gs = kLatentDim / ng;

  // Scratch layout (sizes in elements): queries, one step of keys, scores, the accumulators.
  size_t bytes = 0;
  for (int pass = 0; pass < 2; ++pass) {
    ScratchCarver cv(pass ? static_cast<unsigned char*>(scratch.get(bytes)) : nullptr);
    float* q = cv.take<float>(size_t(R) * kQkDim);     // queries (int8: rope part only used)
    int8_t* q8 = cv.take<int8_t>(size_t(R) * kLatentDim);
    float* qs = cv.take<float>(R);                     // int8: per-row query scale
    float* kf = cv.take<float>(size_t(T) * kQkDim);    // step keys (fp) / rope (int8)
    int8_t* k8 = cv.take<int8_t>(size_t(T) * kLatentDim);
    float* ks = cv.take<float>(size_t(T) * ng);        // int8: key/value scales [T, ng]
    float* s = cv.take<float>(size_t(R) * T);          // scores, then probabilities
    uint8_t* p8 = cv.take<uint8_t>(size_t(R) * T);     // int8: quantized probabilities
    float* lo = cv.take<float>(size_t(R) * kLatentDim);  // this step's P.V
    float* go_res = cv.take<float>(size_t(R) * kLatentDim);  // resident accumulator
    SoftmaxState* st = cv.take<SoftmaxState>(R);
    int* last = cv.take<int>(R);
    int* vis = cv.take<int>(R);        // visible tokens of the step per row
    float* alpha = cv.take<float>(R);  // the step's rescale of the row's accumulator
    if (pass == 0) {
      bytes = cv.used();
      continue;
    }

    // Rows: r = i * nh + hh. The accumulator `go` is scratch (resident) or the output rows
    // themselves (spill: moved out and back every step, the seed's old UP).
    auto go_row = [&](int r) -> float* {
      const int i = r / nh, hh = r % nh;
      return a.up == UpForm::resident ? go_res + size_t(r) * kLatentDim
                                      : a.o + i * a.o_stride_i + hh * a.o_stride_h;
    };
    const float* cscale = (kInt8 && mode == KvScale::channel) ? cache.channel_scales() : nullptr;
    for (int r = 0; r < R; ++r) {
      const int i = r / nh, h = a.head_begin + r % nh;
      const uint16_t* src = a.q + ((int64_t(a.seq) * p.q_len + i) * p.num_heads + h) * kQkDim;
      float* qr = q + size_t(r) * kQkDim;
      for (int d = 0; d < kQkDim; ++d) qr[d] = to_f32(KV, src[d]);
      if constexpr (kInt8) {
        if (cscale)
          for (int c = 0; c < kLatentDim; ++c) qr[c] *= cscale[c];
        qs[r] = quantize_query_row(qr, q8 + size_t(r) * kLatentDim);
      }
      st[r] = SoftmaxState{};
      last[r] = last_visible(p, a.seq, i);
      std::fill(go_row(r), go_row(r) + kLatentDim, 0.f);
    }

    StageMarks marks(a.stages, R);
    for (int t0 = a.kv_begin, step = 0; t0 < a.kv_end; t0 += T, ++step) {
      const int n = std::min(T, a.kv_end - t0);
      marks.step(step, n);
      // Gather the step's tokens (only [kv_begin, kv_end) is ever read).
      for (int t = 0; t < n; ++t) {
        const int64_t slot = slot_of(p, bs, a.seq, t0 + t);
        if constexpr (kInt8) {
          std::memcpy(k8 + size_t(t) * kLatentDim, cache.latent_i8(slot), kLatentDim);
          const uint16_t* rp = cache.rope_bf16(slot);
          for (int d = 0; d < kRopeDim; ++d) kf[size_t(t) * kQkDim + kLatentDim + d] = bf16_to_f32(rp[d]);
          for (int g = 0; g < ng; ++g)
            ks[size_t(t) * ng + g] = per_token                 ? cache.token_scales(slot)[g]
                                     : mode == KvScale::tensor ? cache.tensor_scale()
                                                               : 1.f;
        } else if constexpr (kFp8) {
          // bf16(e4m3 x scale): what the AVX-512 kernel widens each key to in registers.
          const uint8_t* src = cache.token_fp8(slot);
          float* kr = kf + size_t(t) * kQkDim;
          for (int c = 0; c < kLatentDim; ++c) {
            float sc;
            std::memcpy(&sc, src + kFp8ScaleOffset + 4 * (c / kFp8Tile), 4);
            kr[c] = bf16_to_f32(f32_to_bf16(fp8e4m3_to_f32(src[c]) * sc));
          }
          for (int d = 0; d < kRopeDim; ++d) {
            uint16_t h;
            std::memcpy(&h, src + kFp8RopeOffset + 2 * d, 2);
            kr[kLatentDim + d] = bf16_to_f32(h);
          }
        } else {
          const uint16_t* src = cache.token16(slot);
          for (int d = 0; d < kQkDim; ++d) kf[size_t(t) * kQkDim + d] = to_f32(KV, src[d]);
        }
      }
      // QK (int8: S_nope in int32, then the rope part in fp32), one row at a time.
      for (int r = 0; r < R; ++r) {
        float* sr = s + size_t(r) * T;
        // Visible tokens of this step; none for a row that already saw a NaN or Inf (its result
        // is NaN whatever follows).
        vis[r] = std::isnan(st[r].m) ? 0 : std::min(n, last[r] - t0 + 1);
        for (int t = 0; t < vis[r]; ++t) {
          const float* kr = kf + size_t(t) * kQkDim;
          if constexpr (kInt8) {
            const int8_t* qa = q8 + size_t(r) * kLatentDim;
            const int8_t* ka = k8 + size_t(t) * kLatentDim;
            const float* kst = ks + size_t(t) * ng;
            // S_nope = sum over groups of (int32 dot of the group) x (the key's group scale).
            float sn = 0.f;
            for (int g = 0; g < ng; ++g) {
              int32_t acc = 0;
#pragma omp simd reduction(+ : acc)
              for (int c = g * gs; c < (g + 1) * gs; ++c) acc += int32_t(qa[c]) * int32_t(ka[c]);
              sn += float(acc) * kst[g];
            }
            sr[t] = sn * qs[r];
          } else {
            const float* qr = q + size_t(r) * kQkDim;
            float acc = 0.f;
#pragma omp simd reduction(+ : acc)
            for (int d = 0; d < kQkDim; ++d) acc += qr[d] * kr[d];
            sr[t] = acc * p.softmax_scale;
          }
        }
      }
      if constexpr (kInt8) {
        marks.done(Stage::QK_nope);
        for (int r = 0; r < R; ++r) {
          float* sr = s + size_t(r) * T;
          const float* qr = q + size_t(r) * kQkDim + kLatentDim;
          for (int t = 0; t < vis[r]; ++t) {
            const float* kr = kf + size_t(t) * kQkDim;
            float rope = 0.f;
#pragma omp simd reduction(+ : rope)
            for (int d = 0; d < kRopeDim; ++d) rope += qr[d] * kr[kLatentDim + d];
            sr[t] = (sr[t] + rope) * p.softmax_scale;
          }
        }
        marks.done(Stage::QK_rope);
      } else {
        marks.done(Stage::QK);
      }

      // SM. A fully masked step leaves the row's state unchanged.
      for (int r = 0; r < R; ++r) {
        if (vis[r] <= 0) continue;
        float* sr = s + size_t(r) * T;
        float mx = kNegInf;
        bool bad = false;
        for (int t = 0; t < vis[r]; ++t) {
          mx = std::max(mx, sr[t]);
          bad |= !std::isfinite(sr[t]);
        }
        if (bad) {  // DESIGN §6: a visible NaN or Inf makes the row's o and lse NaN
          st[r].m = st[r].l = std::numeric_limits<float>::quiet_NaN();
          vis[r] = 0;  // no PV or UP for it this step
          continue;
        }
        alpha[r] = st[r].rescale_to(mx);
        const float shift = st[r].shift();
        float sum = 0.f;
        for (int t = 0; t < vis[r]; ++t) {
          sr[t] = std::exp(sr[t] - shift);
          sum += sr[t];
        }
        st[r].add_sum(sum);
      }
      marks.done(Stage::SM);

      // PV.
      for (int r = 0; r < R; ++r) {
        const int nv = vis[r];
        if (nv <= 0) continue;
        float* sr = s + size_t(r) * T;
        float* lor = lo + size_t(r) * kLatentDim;
        if constexpr (kInt8) {
          // Per group g of value channels: P'_t = P_t * s_{t,g} (the value scale of the group;
          // 1 in the static modes, one group). The row's largest P' of the step (an attention
          // sink, say) is applied exactly in fp32; the others are quantized to u8 against the
          // largest of them, so one dominant key does not cost the rest of the step their
          // resolution. Each group's P.V then stays an integer product over its channels.
          const float ts = mode == KvScale::tensor ? cache.tensor_scale() : 1.f;
          uint8_t* pr = p8 + size_t(r) * T;
          int32_t acc[kLatentDim] = {};  // each group sums into its own channels
          for (int g = 0; g < ng; ++g) {
            auto pscaled = [&](int t) { return per_token ? sr[t] * ks[size_t(t) * ng + g] : sr[t]; };
            int top = 0;
            for (int t = 1; t < nv; ++t)
              if (pscaled(t) > pscaled(top)) top = t;
            const float p_top = pscaled(top);
            float pm = 0.f;
            for (int t = 0; t < nv; ++t)
              if (t != top) pm = std::max(pm, pscaled(t));
            const float inv = pm > 0.f ? 255.f / pm : 0.f;
            for (int t = 0; t < nv; ++t)
              pr[t] = t == top ? 0 : uint8_t(std::nearbyint(pscaled(t) * inv));
            for (int t = 0; t < nv; ++t) {
              const int32_t pt = pr[t];
              const int8_t* v = k8 + size_t(t) * kLatentDim;
              for (int d = g * gs; d < (g + 1) * gs; ++d) acc[d] += pt * int32_t(v[d]);
            }
            const float dq = pm / 255.f * ts;
            const int8_t* vt = k8 + size_t(top) * kLatentDim;
            for (int d = g * gs; d < (g + 1) * gs; ++d)
              lor[d] = (float(acc[d]) * dq + p_top * ts * float(vt[d])) * (cscale ? cscale[d] : 1.f);
          }
        } else {
          std::fill(lor, lor + kLatentDim, 0.f);
          for (int t = 0; t < nv; ++t) {
            // The bf16 kernels feed P to their dot products in bf16; round the same way here.
            const float pt = KV != KvDType::fp16 ? bf16_to_f32(f32_to_bf16(sr[t])) : sr[t];
            const float* v = kf + size_t(t) * kQkDim;
            for (int d = 0; d < kLatentDim; ++d) lor[d] += pt * v[d];
          }
        }
      }
      marks.done(Stage::PV);

      // UP.
      for (int r = 0; r < R; ++r) {
        if (vis[r] <= 0) continue;
        float* go = go_row(r);
        const float* lor = lo + size_t(r) * kLatentDim;
        for (int d = 0; d < kLatentDim; ++d) go[d] = go[d] * alpha[r] + lor[d];
      }
      marks.done(Stage::UP);
    }

    // Finalize: o = go / l, lse = m + log l; rows that saw no key: o = 0, lse = -inf.
    for (int r = 0; r < R; ++r) {
      const int i = r / nh, hh = r % nh;
      float* out = a.o + i * a.o_stride_i + hh * a.o_stride_h;
      const float* go = go_row(r);
      if (go != out) std::copy(go, go + kLatentDim, out);
      a.lse[i * a.lse_stride_i + hh * a.lse_stride_h] = finalize(st[r], out, kLatentDim);
    }
  }
}

bool always() { return true; }

}  // namespace

const KernelInfo decode_bf16_portable{.name = "decode_bf16_portable", .kv = KvDType::bf16,
                                     .portable = true, .isa = Isa::portable, .supported = always,
                                     .run = run<KvDType::bf16>, .stages = item_stages};
const KernelInfo decode_f16_portable{.name = "decode_f16_portable", .kv = KvDType::fp16,
                                    .portable = true, .isa = Isa::portable, .supported = always,
                                    .run = run<KvDType::fp16>, .stages = item_stages};
const KernelInfo decode_i8_portable{.name = "decode_i8_portable", .kv = KvDType::int8,
                                   .portable = true, .isa = Isa::portable, .supported = always,
                                   .run = run<KvDType::int8>, .stages = item_stages_split_qk,
                                   .group_scales = true};
const KernelInfo decode_fp8_portable{.name = "decode_fp8_portable", .kv = KvDType::fp8,
                                    .portable = true, .isa = Isa::portable, .supported = always,
                                    .run = run<KvDType::fp8>, .stages = item_stages};

}  // namespace mla::cpu
