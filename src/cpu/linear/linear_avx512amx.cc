// The tile-unit projection kernel (linear_tiles-inl.h) built with the AMX instructions; called only
// where cpu_has_amx_set() (isa.h) holds.
// GCC 12's _mm512_undefined_* trip -Wmaybe-uninitialized where inlined (GCC bug 105593).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include "cpu/linear/linear_tiles-inl.h"

namespace mla::cpu {

void linear_tiles_amx(const TileProduct& p, int64_t nb0, int64_t nb1) { tiles_rows(p, nb0, nb1); }

}  // namespace mla::cpu
