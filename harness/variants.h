// Kernel configurations the benchmark compares, written as text on the command line:
//
//   SPEC    := CONFIG ':' CONFIG        the first is the "old" column, the second "new"
//   CONFIG  := PRESET | [PRESET ','] ITEM (',' ITEM)*
//   PRESET  := 'old'                    chunk=1,up=spill,red=separate (the straightforward kernel)
//            | 'new'                    chunk=<--chunk>,up=resident,red=last (the best one)
//   ITEM    := 'chunk=' N               KV tiles of 64 tokens per pipeline step, N >= 1
//            | 'up=' UP                 UP: resident (output accumulator kept in registers/L1)
//                                       or spill (moved out and back every chunk: no "GO move")
//            | ('red=' | 'reduction=') RED   RED: separate or last (who merges split-KV partials)
//            | 'isa=' ISA               ISA: best, avx512, avx2 (force those kernels) or portable
//                                       (the plain C++ kernels)
//            | 'impl=' IMPL             IMPL: fast or ref (the float64 reference; for debugging)
//            | 'rot=' ROT               ROT: none or hadamard (the cache's latent rotation: the
//                                       variant runs on a cache of the same values written with it)
//
// Keys a configuration leaves out take the "new" preset's values; items after a preset override
// it. Examples: "old:new" (the default), "chunk=1:chunk=4", "red=separate:red=last",
// "old:old,chunk=4", "isa=portable:isa=best".
#pragma once

#include <string>
#include <vector>

#include "mla/attention.h"

namespace mla::bench {

struct Variant {
  std::string text;              // as given: "old", "chunk=1,up=spill"
  DecodeOptions opt;             // threads not set here (the caller's --threads)
  bool isa_given = false;        // the configuration names an isa (mla bench --isa leaves it)
  KvRotation rotation = KvRotation::none;  // of the cache this variant runs on
  std::string describe() const;  // every key: "chunk=1,up=spill,red=separate,isa=best,impl=fast"
};

DecodeOptions old_options();           // chunk 1, spill, separate
DecodeOptions new_options(int chunk);  // chunk, resident, last

// One CONFIG. Throws mla::Error naming the offending item.
Variant parse_variant(const std::string& config, int default_chunk);
// A SPEC: exactly two configurations. Throws mla::Error.
std::vector<Variant> parse_variants(const std::string& spec, int default_chunk);

}  // namespace mla::bench
