// Which instructions a file is compiled with, by the end of its name (CMakeLists.txt applies the
// flags), and the run-time check that guarantees each set. A kernel's `supported` is exactly its
// file's check, so no instruction the compiler may pick for that file is missing at run time.
//
//   *_avx512.cc, *_avx512bf16.cc, *_avx512vnni.cc   AVX-512 F BW VL DQ VNNI BF16, FMA, F16C
//   *_avx512amxemu.cc                                the same (AMX emulated in C++)
//   *_avx512amx.cc                                   the same and AMX-TILE, AMX-INT8, AMX-BF16
//   *_avx512f.cc                                     AVX-512 F, FMA, F16C
//   *_avx2.cc                                        AVX2, FMA, F16C
//   *_avx2vnni.cc                                    AVX2, FMA, F16C, AVX-VNNI (VEX vpdpbusd)
//   anything else                                    the baseline x86-64 target
//
// Inline functions of shared headers used in these files must not be emitted there as shared
// (weak) symbols, or the linker may hand their ISA build to baseline callers: keep such helpers
// static or in an anonymous namespace. tests/check_isa_objects.sh fails the build's tests if an
// ISA object defines any weak symbol.
#pragma once

namespace mla::cpu {

// Defined in isa.cc, a baseline file: the checks run on any x86-64 CPU.
bool cpu_has_avx512_set();   // AVX-512 F BW VL DQ VNNI BF16, FMA, F16C
bool cpu_has_avx512f_set();  // AVX-512 F, FMA, F16C
bool cpu_has_avx2_set();     // AVX2, FMA, F16C
bool cpu_has_avx2vnni_set(); // AVX2, FMA, F16C, AVX-VNNI (CPUID.(7,1):EAX bit 4)
// The AVX-512 set, AMX-TILE, AMX-INT8, AMX-BF16, and the tile state granted to this process
// (requested once, on the first call: arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)).
// MLA_AMX=0 in the environment makes it false, as a refused permission does.
bool cpu_has_amx_set();

}  // namespace mla::cpu
