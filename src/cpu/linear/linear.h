// Projections of the attention layer: y[n, out] = x[n, in] . W[out, in]^T with fp32 activations and
// weights read in their stored type (bf16, fp16, fp32, or fp8 e4m3 with a float32 scale per
// block), so at batch 1 each weight byte crosses the memory bus once and is widened in registers.
// The rows of W are split across the pool's workers; within a worker, tiles of 4 rows x up to 4
// tokens keep 16 accumulators in registers (AVX-512, linear_avx512.cc) so a weight row loaded from
// memory serves every token of the batch. A portable kernel (widen one row into L1, then dot it
// with every token) runs where AVX-512 is absent.
//
// Beyond one token the products go to the AMX tile unit where the CPU has it (linear_tiles-inl.h):
// a weight with a tile-packed bf16 copy (pack_tiles, made once at load) is read tile by tile, each
// 16 x 32 weight tile once per product for every token of the batch, so a batch of 64 costs the
// weight bytes a batch of 1 costs. The activations are rounded to bf16 once per product.
#pragma once

#include <cstddef>
#include <cstdint>

namespace mla::cpu {

// i8: int8 with one float scale per output row (quantized at load, quantize_rows_i8).
enum class WDType { bf16, f16, f32, fp8_e4m3, i8 };
const char* wdtype_name(WDType t);
size_t wdtype_size(WDType t);

struct LinearWeight {
  int64_t out = 0, in = 0;
  WDType dtype = WDType::bf16;
  const void* w = nullptr;           // [out, ld] row-major; row r starts at w + r * ld elements
  int64_t ld = 0;
  // fp8 only: value = w * scale_inv[(row0 + r) / block_rows][c / block_cols] (scale_ld columns).
  const float* scale_inv = nullptr;
  int block_rows = 128, block_cols = 128;
  int64_t scale_ld = 0, row0 = 0;
  // i8 only: value = w * row_scale[r].
  const float* row_scale = nullptr;
  // Optional copy in the tile layout (pack_tiles), read by the AMX kernel; i8 keeps its integers
  // there (exact in bf16) and applies row_scale to the sums.
  const uint16_t* tiles = nullptr;
  // i8 only, instead of tiles: the integers in the same layout (pack_tiles_i8), widened to bf16 by
  // the kernel one chunk at a time, so batches of 2 and more read 1 byte a weight too.
  const int8_t* tiles_i8 = nullptr;

  int64_t bytes() const;  // weight bytes read by one product (scales included)
  float at(int64_t r, int64_t c) const;  // one de-quantized element (slow; for tests and copies)
};

// Which kernel a product runs on. best: the tile unit for n >= kTileMinTokens when the weight has
// tiles and the CPU has AMX, else AVX-512, else portable. The others force one (tests compare
// them); amx and amx_emu need w.tiles, amx needs the hardware, amx_emu (the scalar tile
// emulation, amx_tiles-inl.h) runs on any AVX-512 CPU and is never picked by best.
enum class LinearIsa { best, portable, avx512, amx, amx_emu };
const char* linear_isa_name(LinearIsa isa);
// Why 2: one token is weight-bound on either unit (the AVX-512 kernel streams the checkpoint's rows
// as stored); from two tokens on the fp32 FMAs of the AVX-512 kernel cost more than the tiles'.
constexpr int64_t kTileMinTokens = 2;
// int8 weights go to the tiles from 8 tokens on: their widening to bf16 (about 15 ms for
// DeepSeek-V3's o_proj on 2 threads, whatever the batch, against 6.5 ms for its AVX-512 int8
// kernel at 1 token, 7.4 at 2 and 18.6 at 8; 71 at 32) costs more than the fp32 FMAs below 8.
constexpr int64_t kTileMinTokensI8 = 8;
// Up to 16 tokens (one token tile) the tile kernel splits x into bf16 hi + lo (TileProduct::split),
// which keeps the layer's error at the fp32 kernel's (DeepSeek-V3 b8 against float64: 4.2e-3
// split, 7.6e-3 with x rounded to bf16) for free: the product is weight-bound. Beyond, the doubled
// tile work costs (o_proj at 64 tokens: 26 ms split, 18.5 ms not, 12 ms at 8), so x is rounded.
constexpr int64_t kTileSplitMaxTokens = 16;

// The tile layout (DESIGN §10, B operand of tdpbf16ps): blocks of 16 output rows x 32 input
// columns, 1 KB each, ordered [out / 16][in / 32], zero-padded at both edges; inside a block,
//   block[k2][r][e] = W(16 * nb + r, 32 * kb + 2 * k2 + e)    k2 < 16, r < 16, e < 2
// so a block is one B tile (16 rows of 64 bytes) and one row block's tiles are one stream.
constexpr int64_t kTileRows = 16, kTileCols = 32;
int64_t tile_elems(int64_t out, int64_t in);  // uint16 elements pack_tiles writes
void pack_tiles(const LinearWeight& w, uint16_t* dst);
void pack_tiles_i8(const LinearWeight& w, int8_t* dst);  // w.dtype i8; tile_elems bytes

// y[i] = bf16(x[i]) (round to nearest even, NaN kept NaN; the AVX-512 path flushes fp32 denormals
// to zero, as vcvtneps2bf16 does): the layer's query for the attention kernels, 4.7 M values at
// DeepSeek-V3 batch 64, which the scalar loop took milliseconds over.
void round_bf16(const float* x, uint16_t* y, int64_t n);
void round_bf16_avx512(const float* x, uint16_t* y, int64_t n);

// Per-output-row int8 quantization of w (any stored type): scale[r] = max_c |W(r, c)| / 127,
// q = round(W / scale). A row holding a NaN or an infinity gets scale NaN (its outputs are NaN).
void quantize_rows_i8(const LinearWeight& w, int8_t* q /*[out, in]*/, float* scale /*[out]*/);

// y[t * ldy + r] = sum_c x[t * ldx + c] * W(r, c) for t < n, r < out. threads: pool workers
// (0: all CPUs).
void linear(const LinearWeight& w, int64_t n, const float* x, int64_t ldx, float* y, int64_t ldy,
            int threads, LinearIsa isa = LinearIsa::best);

// Per-head products in one dispatch: for h < heads,
//   y[h * y_head + t * ldy + r] = sum_c x[h * x_head + t * ldx + c] * ws[h](r, c).
// (W_UK absorption and the W_UV einsum: 128 small products a step, which one pool run per product
// would spend a good part of on dispatch.) Every ws[h] must have the same out and in.
void linear_heads(const LinearWeight* ws, int heads, int64_t n, const float* x, int64_t ldx,
                  int64_t x_head, float* y, int64_t ldy, int64_t y_head, int threads,
                  LinearIsa isa = LinearIsa::best);

// Internal: the kernels over rows [r0, r1), in linear.cc and linear_avx512.cc.
void linear_rows_portable(const LinearWeight& w, int64_t r0, int64_t r1, int64_t n, const float* x,
                          int64_t ldx, float* y, int64_t ldy, float* row_buf /*[in]*/);
bool linear_avx512_supported();  // linear.cc: cpu_has_avx512_set() (isa.h)
void linear_rows_avx512(const LinearWeight& w, int64_t r0, int64_t r1, int64_t n, const float* x,
                        int64_t ldx, float* y, int64_t ldy);


// One product (or one head's) on the tile unit, for linear_tiles_*: a holds the bf16 activations
// as A tiles of 16 tokens x 32 columns, [k_blocks][m_tiles][16][32] (zero past n and in), so a tile
// is 1 KB in one piece (rows of the whole input, o_proj's 32 KB apart, all fell into one L1 set),
// b the packed weight tiles.
struct TileProduct {
  const uint16_t* a = nullptr;  // [k_blocks, m_tiles, 16, 32] bf16
  int64_t m_tiles = 0, n = 0;   // A tiles (2 per token tile when split); tokens stored
  bool split = false;           // A holds x's bf16 hi and lo parts (tiles_pack_x_avx512)
  const uint16_t* b = nullptr;  // [ceil(out / 16), k_blocks] tiles of 16 x 32 (see pack_tiles)
  const int8_t* b_i8 = nullptr;  // or the same as int8 (pack_tiles_i8), widened per chunk
  int64_t k_blocks = 0, out = 0;
  const float* row_scale = nullptr;  // [out] or null
  float* y = nullptr;                // y[t * ldy + r]
  int64_t ldy = 0;
  float* acc = nullptr;  // [nb1 - nb0, m_tiles, 16, 16] fp32: partial sums of the call's row blocks
};
// Row blocks [nb0, nb1) of one product (p.acc: that range's own accumulators) (linear_avx512amx.cc / linear_avx512amxemu.cc).
void linear_tiles_amx(const TileProduct& p, int64_t nb0, int64_t nb1);
void linear_tiles_amxemu(const TileProduct& p, int64_t nb0, int64_t nb1);
// A tiles (TileProduct::a) of x [n, in] (AVX-512): token t in tile t / 16, row t % 16, as bf16(x);
// split: hi = bf16(x) in tile 2 (t / 16), lo = bf16(x - hi) in tile 2 (t / 16) + 1.
void tiles_pack_x_avx512(int64_t n, int64_t in, const float* x, int64_t ldx, uint16_t* a,
                         int64_t k_blocks, int64_t m_tiles, bool split);

}  // namespace mla::cpu
