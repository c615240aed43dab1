// The int8 AVX-512 kernels' item: everything a work item sets up before its row tiles run (the
// range's slots, latent rows and key scales, the packed queries, the causal limits and the
// non-finite marks) and the final write of its rows. Shared by the VNNI kernel
// (decode_i8_avx512vnni.cc) and the AMX kernel (i8_amx_avx512-inl.h), which differ only in how a
// row tile runs its steps. Include it only from those files.

#pragma once

#include "cpu/attention/avx512/i8_common_avx512-inl.h"
#include "cpu/attention/item.h"
#include "cpu/attention/avx512/i8_qk_avx512-inl.h"

namespace mla::cpu {
namespace {

// Finalize rows [r0, r0 + rows): o = go / l, lse = ln2 * m + ln l; rows that saw no key: o = 0,
// lse = -inf; rows with m = NaN (a non-finite value seen): o = NaN, lse = NaN.
void finalize(const Item& it, int r0, int rows) {
  const KernelArgs& a = *it.a;
  for (int r = r0; r < r0 + rows; ++r) {
    float* o = a.o + (r / it.nh) * a.o_stride_i + (r % it.nh) * a.o_stride_h;
    const float l = it.l[r];
    float* lse = a.lse + (r / it.nh) * a.lse_stride_i + (r % it.nh) * a.lse_stride_h;
    if (std::isnan(it.m[r])) {  // the row saw a NaN or Inf
      *lse = __builtin_nanf("");
      std::fill_n(o, kLatentDim, __builtin_nanf(""));
      continue;
    }
    *lse = l > 0.f ? lse_base2(it.m[r], l) : kNegInf;
    const __m512 inv = _mm512_set1_ps(l > 0.f ? 1.f / l : 0.f);
    if (it.resident) {
      const float* g = it.go + int64_t(r - r0) * kLatentDim;
      for (int d0 = 0; d0 < kLatentDim; d0 += 64) {
        __m512 x[4];
        for (int i = 0; i < 4; ++i) x[i] = _mm512_mul_ps(_mm512_load_ps(g + d0 + 16 * i), inv);
        positions_to_channels(x);
        for (int i = 0; i < 4; ++i) _mm512_storeu_ps(o + d0 + 16 * i, x[i]);
      }
    } else {
      for (int d = 0; d < kLatentDim; d += 16)
        _mm512_storeu_ps(o + d, _mm512_mul_ps(_mm512_loadu_ps(o + d), inv));
    }
  }
}

// The range's tokens, as run_item hands them to the kernel's body.
struct ItemTokens {
  const int64_t* slot;      // [ntok] cache slots
  const int8_t* const* tok; // [npad] latent rows; a zero row past the range
  const float* ks;          // [npad][ng] key scales (0 past the range)
  int8_t* kstage;           // staging copies for blocks shorter than kMinDirectBlock
  uint16_t* rstage;
  const int8_t* zero;       // a zero latent row
  int nrv;                  // row vectors (16 rows each) of the item
};

// Sets the item up in `scratch` and calls body(const Item&, const ItemTokens&).
// take_extra(ScratchCarver&, int T, int rv_max) takes the kernel's own arrays: it is called
// twice, first to size the scratch (with a null base), then to carve it.
template <class Extra, class Body>
void run_item(const KernelArgs& a, Scratch& scratch, Extra&& take_extra, Body&& body) {
  const DecodeParams& p = *a.p;
  const CacheView& cache = *a.cache;
  const int nh = a.head_end - a.head_begin;
  const int R = q_len_of(p, a.seq) * nh;
  const int Rp = (R + 15) & ~15;
  const int nrv = Rp / 16;
  // P.V sums up to 255 * 127 per token in int32: a step must stay below 66k tokens, which
  // kMaxChunk (decode refuses a larger chunk) guarantees.
  static_assert(int64_t(kMaxChunk) * kKvTile * 255 * 127 < (int64_t(1) << 31));
  const int T = a.chunk * kKvTile;
  const int bs = cache.block_size();
  const KvScale mode = cache.scale_mode();
  const bool resident = a.up == UpForm::resident;
  const bool staged = bs < kMinDirectBlock;
  const int rv_max = std::min(nrv, kMainRV);
  // Scale groups: group modes 512 / gsz, token mode 1 (the token's scale), static modes 1 (none).
  const int gsz = kv_token_scales(mode) > 1 ? kv_scale_group(mode) : 0;
  const int ng = gsz ? kLatentDim / gsz : 1;

  ScratchCarver cv(nullptr);
  for (int pass = 0; pass < 2; ++pass) {
    if (pass) cv = ScratchCarver(static_cast<unsigned char*>(scratch.get(cv.used())));
    uint8_t* qp = cv.take<uint8_t>(size_t(kLatentDim) * Rp);
    uint16_t* qr = cv.take<uint16_t>(size_t(kRopeDim) * Rp);
    int32_t* qsum_neg = cv.take<int32_t>(size_t(Rp) * ng);
    float* qs = cv.take<float>(Rp);
    int32_t* lim = cv.take<int32_t>(Rp);
    float* m = cv.take<float>(Rp);  // running max, in the base-2 scaled domain
    float* l = cv.take<float>(Rp);
    float* alpha = cv.take<float>(Rp);
    float* dq = cv.take<float>(size_t(Rp) * ng);
    float* ptop = cv.take<float>(size_t(Rp) * ng);
    int32_t* top = cv.take<int32_t>(size_t(Rp) * ng);
    float* go = cv.take<float>(size_t(kLatentDim) * 16 * rv_max);
    // Slots, latent rows and key scales of the whole range, the last group of 4 tokens padded
    // with a zero row (never a cache read) and scale 0.
    const int ntok = a.kv_end - a.kv_begin, npad = (ntok + 3) & ~3;
    int64_t* slot = cv.take<int64_t>(ntok);
    const int8_t** tok = cv.take<const int8_t*>(npad);
    float* ks = cv.take<float>(size_t(npad) * ng);
    int8_t* kstage = cv.take<int8_t>(staged ? size_t(T) * kLatentDim : 0);
    uint16_t* rstage = cv.take<uint16_t>(staged ? size_t(T) * kRopeDim : 0);
    float* s = cv.take<float>(size_t(T) * 16 * rv_max);
    uint8_t* pp = cv.take<uint8_t>(size_t(T) * 16 * rv_max * ng);
    int8_t* zero = cv.take<int8_t>(kLatentDim);
    float* cs_pos = cv.take<float>(kLatentDim);
    take_extra(cv, T, rv_max);
    if (pass == 0) continue;

    // A negative softmax scale is folded into the query (negating q8 and the rope bf16 is exact),
    // so the running maximum is taken over s * |scale| and the exp argument is never positive.
    const bool negate = p.softmax_scale < 0.f;
    const float* cs = mode == KvScale::channel ? cache.channel_scales() : nullptr;
    const float tensor = mode == KvScale::tensor ? cache.tensor_scale() : 1.f;
    step_slots(a, a.kv_begin, ntok, slot);
    for (int t = 0; t < ntok; ++t) tok[t] = cache.latent_i8(slot[t]);
    std::fill(tok + ntok, tok + npad, zero);
    // The first tokens, which no QK tile prefetches, start on their way while the queries are
    // packed.
    if (!staged) prefetch_tokens(tok, slot, cache.rope_bf16(0), std::min(ntok, kPrefetchDist));
    pack_queries(a, nh, R, Rp, negate, cs, tensor, gsz ? gsz : kLatentDim, qp, qr, qsum_neg, qs);
    if (cs)
      for (int d = 0; d < kLatentDim; ++d) cs_pos[position_of(d)] = cs[d];
    std::memset(zero, 0, kLatentDim);
    // A non-finite key scale (a latent written from NaN/Inf) is replaced by 0 so that P' and the
    // step's quantization stay finite for the rows that cannot see the token; the rows that can
    // (a prefix of positions: lim >= bad_pos) start with m = NaN, as do rows whose query is not
    // finite (qs = NaN from pack_queries).
    int bad_pos = a.kv_end;
    const int nks = mode == KvScale::token ? 1 : gsz ? ng : 0;
    for (int t = 0; t < ntok; ++t)
      for (int g = 0; g < nks; ++g) {
        float& k = ks[int64_t(t) * nks + g];
        k = nks == 1 && !gsz ? cache.token_scale(slot[t]) : cache.token_scales(slot[t])[g];
        if (!std::isfinite(k)) {
          k = 0.f;
          bad_pos = std::min(bad_pos, a.kv_begin + t);
        }
      }
    std::fill(ks + int64_t(ntok) * nks, ks + int64_t(npad) * nks, 0.f);
    for (int r = 0; r < Rp; ++r) {
      l[r] = 0.f;
      // Padding rows see everything (their scores are 0, finite; their outputs are never written).
      lim[r] = r < R ? std::min(last_visible(p, a.seq, r / nh), a.kv_end - 1) : a.kv_end - 1;
      m[r] = r < R && (lim[r] >= bad_pos || std::isnan(qs[r])) ? __builtin_nanf("") : kNegInf;
    }
    const Item it{.a = &a,
                  .cache = &cache,
                  .rope = cache.rope_bf16(0),
                  .R = R,
                  .Rp = Rp,
                  .nh = nh,
                  .tok = mode == KvScale::token,
                  .resident = resident,
                  .staged = staged,
                  .gsz = gsz,
                  .ng = ng,
                  .c2 = std::fabs(p.softmax_scale) * kLog2e,
                  .tensor = tensor,
                  .cs = cs,
                  .qp = qp,
                  .qr = qr,
                  .qsum_neg = qsum_neg,
                  .qs = qs,
                  .lim = lim,
                  .m = m,
                  .l = l,
                  .alpha = alpha,
                  .dq = dq,
                  .ptop = ptop,
                  .top = top,
                  .go = go,
                  .cs_pos = cs_pos,
                  .s = s,
                  .pp = pp,
                  .pp_group = int64_t(T) / 4 * 16 * rv_max};

    body(it, ItemTokens{.slot = slot, .tok = tok, .ks = ks, .kstage = kstage, .rstage = rstage,
                        .zero = zero, .nrv = nrv});
  }
}

}  // namespace
}  // namespace mla::cpu
