// libFuzzer target for the .npy reader (src/core/npy.cc): any bytes must either load as an array
// whose byte count matches its shape and dtype, or be refused with mla::Error; never a crash, a
// sanitizer report, a hang or an unbounded allocation. Built and run by scripts/fuzz.sh.
//
// Other parsers (the safetensors / config readers) get a target beside this one, fuzz_<name>.cc
// with the same LLVMFuzzerTestOneInput shape and a corpus in fuzz/corpus/<name>/; scripts/fuzz.sh
// builds and runs every fuzz/fuzz_*.cc it finds.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "mla/npy.h"
#include "mla/status.h"

namespace {

// read_npy takes a path: the input goes to a per-process file in /dev/shm (or TMPDIR).
const std::string& scratch_path() {
  static const std::string p = [] {
    const char* dir = std::getenv("MLA_FUZZ_TMP");
    return std::string(dir && *dir ? dir : "/dev/shm") + "/mla_fuzz_npy_" +
           std::to_string(::getpid()) + ".npy";
  }();
  return p;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& path = scratch_path();
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) std::abort();
  if (size && std::fwrite(data, 1, size, f) != size) std::abort();
  std::fclose(f);
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
