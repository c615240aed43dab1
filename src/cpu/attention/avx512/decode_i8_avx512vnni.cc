// The int8-cache attention kernel for AVX-512 VNNI CPUs (DESIGN §3, §4, §7): S_nope and P.V run
// on vpdpbusd (u8 x s8 -> int32, 64 products per instruction), S_rope on vdpbf16ps. Its own file:
// one instantiation file per dtype and ISA.
//
// The item's rows (r = i * nh + h) go in tiles of 32 (and one of 16 for the rest); each row tile
// walks the whole KV range in steps of T = chunk * 64 tokens, so that its output accumulator stays
// in L1/L2 from the first step to the last (the seed's "GO move" on a CPU: 32 rows x 512 fp32,
// 64 KiB) while the keys stream from L3 at a few bytes per dot product. Per step:
//
//   QK  s[t][rows] = S_nope * qs * ks[t] + S_rope          rows in the lanes of each vector
//         S_nope: acc[t][rows] += (k[t][4g..4g+3] ^ 0x80) . q8[4g..4g+3][rows]
//         the key is the u8 operand: 4 channels broadcast straight from the cache and flipped
//         to u8 by one vpxord {1to16}; the query, packed once per item, is the s8 operand; the
//         flip adds 128 * sum_c q8[c], a per-row constant the accumulators start from negated:
//         exact, and nothing per token to precompute.
//   SM  running max down the token axis (no horizontal reductions), p = 2^(s * c - m), row sums,
//       P' = P * value scale quantized to u8 against each row's maximum within the step,
//       packed 4 tokens per 32-bit lane: pp[t/4][rows]
//   PV  acc[row][dims] += pp[t/4][row] . V[t..t+3][dims]   rows broadcast, 16 dims x 4 tokens per
//       vector: V is read straight from the cache, 64 channels of 4 tokens at a time, and
//       interleaved byte-wise in registers (4 unpacks), so no repacked copy of V is ever stored
//   UP  go[row][dims] = go * alpha[row] + acc * dq[row] in the PV register epilogue (resident),
//       or lo -> scratch and a separate pass over the output rows (spill, the seed's old form).
//
// Group scales (group32/64/128: one scale per group of G channels of each token): QK keeps one
// int32 accumulator chain per group, each starting from the group's own flip correction, and sums
// acc x key group scale in fp32 (tiles of half the tokens, QkShape); SM quantizes P x the group's
// scale per group, each with its own top-1 and step maximum, into one u8 P matrix per group; PV
// reads each 64-channel block's group (group32: two, by 128-bit lane). Token, tensor and channel
// modes take the unchanged code (the choice is a template parameter or a branch outside the loops).
//
// Why no stored repack: on Zen 4 every 64-byte store takes about 1.6 issue slots from vpdpbusd,
// and a repack of V writes 512 bytes per token (measured: 10-12% of a 16-row item); the unpacks
// run on other pipes, in the shadow of the dot products. Likewise vfmadd, vmulps and vcmpps
// share the dot-product pipes while loads, adds, max, converts, shuffles, roundscale and scalef
// do not: the softmax uses exp2_fma5_ps and rescales lazily (softmax_rows) to stay off them.
//
// The byte interleave leaves the channels of each 64-channel group in a fixed order; go and lo
// hold them in that order and the final write (and the spill form's UP) put them back:
//
//   position p = g*64 + i*16 + L*4 + j   holds channel   d = g*64 + L*16 + i*4 + j
//
// (i: which unpack output, L: 128-bit lane, j: 32-bit element).
//
//   qp   [128][Rp] u32     4 latent channels of a query row, s8           once per item
//   qr   [32][Rp]  u32     2 rope values of a query row, bf16             once per item
//   tok  [range]           the range's latent rows in the cache           once per item
//   s    [T][RV][16] f32   scores of one row tile (RV vectors of 16 rows) per step
//   pp   [T/4][RV][16] u32 4 tokens' u8 probabilities of a row            per step
//   go   [32][512] f32     the row tile's output accumulator by position  per row tile
//
// Register tiles (32 zmm): QK 2 row vectors x 8 tokens or 1 x 16; PV 4 rows x 64 channels. The
// dot products are inline asm, so GCC 12 keeps every accumulator in its register (checked with
// objdump -d: no zmm stack traffic in the loops; the intrinsics version spilled them). Each tile
// runs at 0.98-1.0 of the vpdpbusd rate from L1/L2.

// The stages live in i8_qk_avx512-inl.h, i8_softmax_avx512-inl.h and i8_pv_avx512-inl.h (shared
// pieces: i8_common_avx512-inl.h), included only here so they are built with this file's flags.

#include <algorithm>
#include <cmath>
#include <cstring>

#include "cpu/attention/avx512/i8_common_avx512-inl.h"  // first: its pragma precedes <immintrin.h>
#include "cpu/attention/avx512/i8_item_avx512-inl.h"
#include "cpu/attention/avx512/i8_pv_avx512-inl.h"
#include "cpu/attention/avx512/i8_qk_avx512-inl.h"
#include "cpu/attention/avx512/i8_softmax_avx512-inl.h"

namespace mla::cpu {
namespace {

// One row tile through the step: QK -> SM -> PV (+ UP).
template <int RV>
void row_tile(const Item& it, const Step& st, int v0, const int8_t* const* pf_tok,
              const int64_t* pf_slot, int pf_n, StageMarks& marks) {
  alignas(64) float mx[16 * RV];
  std::fill_n(mx, 16 * RV, kNegInf);
  qk_rows<RV>(it, st, v0, mx);  // S_nope (int32) and the rope part together, per token tile
  marks.done(Stage::QK);
  const bool same_max = softmax_rows<RV>(it, st, v0, mx);
  marks.done(Stage::SM);
  const int r0 = 16 * v0;
  const int rows = std::min(16 * RV, it.R - r0);  // padding rows need no P.V
  const PvArgs pa{.tok = st.tok,
                  .pp = reinterpret_cast<const uint32_t*>(it.pp),
                  .ps = 16 * RV,
                  .groups = st.groups,
                  .alpha = it.alpha + r0,
                  .dq = it.dq + r0,
                  .cs = it.cs_pos,
                  .go = it.go,
                  .ptop = it.ptop + r0,
                  .top = it.top + r0,
                  .pf_tok = pf_tok,
                  .pf_slot = pf_slot,
                  .rope = it.rope,
                  .pf_n = pf_n,
                  .gsz = it.gsz,
                  .pp_group = it.pp_group,
                  .gstride = it.Rp};
  const Epi e = !it.resident ? Epi::spill
                : st.first   ? Epi::first
                : same_max   ? Epi::add
                             : Epi::rescale;
  if (it.cs)
    pv_rows<true, false>(pa, rows, e);
  else if (it.gsz == 32)
    pv_rows<false, true>(pa, rows, e);
  else
    pv_rows<false, false>(pa, rows, e);
  marks.done(Stage::PV);
  if (!it.resident) update_spill(it, st, r0, rows);
  marks.done(Stage::UP);  // resident: UP runs in PV's epilogue, timed there
}

// One row tile of RV vectors over the item's whole KV range: its accumulator stays in L1/L2 (the
// seed's "GO move" optimization on a CPU) while the keys stream from L3, a few bytes per dot
// product. The tokens' slots, rows and scales come precomputed for the range.
template <int RV>
void run_rows(const Item& it, int v0, const int64_t* slot, const int8_t* const* tok,
              const float* ks, int8_t* kstage, uint16_t* rstage) {
  const KernelArgs& a = *it.a;
  const int T = a.chunk * kKvTile;  // as in run_item()
  if (v0 > 0 && !it.staged)  // the first row tile's were prefetched in run()
    prefetch_tokens(tok, slot, it.rope, std::min(a.kv_end - a.kv_begin, kPrefetchDist));
  StageMarks marks(a.stages, std::min(16 * RV, it.R - 16 * v0));
  for (int t0 = a.kv_begin, step = 0; t0 < a.kv_end; t0 += T, ++step) {
    const int n = std::min(T, a.kv_end - t0), i0 = t0 - a.kv_begin;
    marks.step(step, n);
    if (it.staged)
      for (int t = 0; t < n; ++t) {
        std::memcpy(kstage + int64_t(t) * kLatentDim, tok[i0 + t], kLatentDim);
        std::memcpy(rstage + int64_t(t) * kRopeDim, it.cache->rope_bf16(slot[i0 + t]),
                    kRopeDim * sizeof(uint16_t));
      }
    const Step st{.t0 = t0,
                  .n = n,
                  .groups = (n + 3) / 4,
                  .first = t0 == a.kv_begin,
                  .slot = slot + i0,
                  .tok = tok + i0,
                  .ks = ks + int64_t(i0) * it.ng,
                  .kstage = kstage,
                  .rstage = rstage,
                  .pf_from = t0 == a.kv_begin ? kPrefetchDist : T / 2};
    // PV prefetches the next step's first T / 2 tokens, QK the step's others.
    const int next = i0 + n, ntok = a.kv_end - a.kv_begin;
    const int pf_n = it.staged ? 0 : std::clamp(ntok - next, 0, T / 2);
    row_tile<RV>(it, st, v0, tok + next, slot + next, pf_n, marks);
  }
  finalize(it, 16 * v0, std::min(16 * RV, it.R - 16 * v0));
}

void run(const KernelArgs& a, Scratch& scratch) {
  run_item(a, scratch, [](ScratchCarver&, int, int) {},
           [&](const Item& it, const ItemTokens& tk) {
             for (int v0 = 0; v0 < tk.nrv;) {
               if (tk.nrv - v0 >= kMainRV) {
                 run_rows<kMainRV>(it, v0, tk.slot, tk.tok, tk.ks, tk.kstage, tk.rstage);
                 v0 += kMainRV;
               } else {
                 run_rows<1>(it, v0, tk.slot, tk.tok, tk.ks, tk.kstage, tk.rstage);
                 v0 += 1;
               }
             }
           });
}

// Its stages: rows in tiles of 16 x kMainRV (the rest in tiles of 16), each tile through every
// step; QK computes S_nope (int32) and the rope part together, per token tile.
std::vector<StageOp> stages(int rows, int kv_begin, int kv_end, int chunk) {
  std::vector<StageOp> all;
  const int nrv = (rows + 15) / 16;
  for (int v0 = 0; v0 < nrv;) {
    const int rv = nrv - v0 >= kMainRV ? kMainRV : 1;
    const std::vector<StageOp> tile =
        item_stages(std::min(16 * rv, rows - 16 * v0), kv_begin, kv_end, chunk);
    all.insert(all.end(), tile.begin(), tile.end());
    v0 += rv;
  }
  return all;
}

}  // namespace

extern const KernelInfo decode_i8_avx512vnni{.name = "decode_i8_avx512vnni",
                                            .kv = KvDType::int8,
                                            .portable = false,
                                            .isa = Isa::avx512,
                                            .supported = cpu_has_avx512_set,
                                            .run = run,
                                            .stages = stages,
                                            .group_scales = true};

}  // namespace mla::cpu