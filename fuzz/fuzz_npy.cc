// libFuzzer target for the .npy reader (src/core/npy.cc): any bytes must either load as an array
// whose byte count matches its shape and dtype, or be refused with mla::Error; never a crash, a
// sanitizer report, a hang or an unbounded allocation. Built and run by scripts/fuzz.sh.
//
// Other parsers (the safetensors / config readers) get a target beside this one, fuzz_<name>.cc
// with the same LLVMFuzzerTestOneInput shape and a corpus in fuzz/corpus/<name>/; scripts/fuzz.sh
// builds and runs every fuzz/fuzz_*.cc it finds.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "fuzz/input_file.h"
#include "mla/npy.h"
#include "mla/status.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& path = mla::fuzz::write_input_file("npy", ".npy", data, size);
  try {
    const mla::NpyArray a = mla::read_npy(path);
    const int64_t n = a.numel();
    if (n < 0 || uint64_t(n) * mla::dtype_size(a.dtype) != a.bytes.size()) std::abort();
    (void)a.shape_str();
    // Also the checked form the CLI uses.
    (void)mla::read_npy(path, mla::DType::f32, {-1, -1, 576});
  } catch (const mla::Error&) {
  }
  return 0;
}
