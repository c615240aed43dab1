// The tile-unit projection kernel (linear_tiles-inl.h) over the scalar tile emulation, so its logic
// runs in the tests on every AVX-512 CPU (LinearIsa::amx_emu; never picked by best).
#define MLA_AMX_EMULATE 1
// GCC 12's _mm512_undefined_* trip -Wmaybe-uninitialized where inlined (GCC bug 105593).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include "cpu/linear/linear_tiles-inl.h"

namespace mla::cpu {

void linear_tiles_amxemu(const TileProduct& p, int64_t nb0, int64_t nb1) { tiles_rows(p, nb0, nb1); }

}  // namespace mla::cpu
