// libFuzzer target for the safetensors reader (src/io/safetensors.cc): any bytes must either open
// as a file whose tensors lie inside it with byte counts matching dtype x shape, or be refused
// with mla::Error; never a crash, a sanitizer report or a read past the mapping. Built and run by
// scripts/fuzz.sh; the corpus files name their tensors "w" and "b".
#include <cstdint>
#include <cstdlib>
#include <string>

#include "fuzz/input_file.h"
#include "mla/safetensors.h"
#include "mla/status.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& path = mla::fuzz::write_input_file("st", ".safetensors", data, size);
  try {
    const mla::TensorStore s = mla::TensorStore::open_file(path);
    for (const char* name : {"w", "b"}) {
      if (!s.has(name)) continue;
      const mla::StTensor t = s.get(name);
      const int64_t n = t.numel();
      if (n < 0) std::abort();
      // Touch the first and last byte: they must lie inside the mapping.
      const size_t bytes = size_t(n) * mla::st_dtype_size(t.dtype);
      if (bytes) {
        volatile unsigned char x = static_cast<const unsigned char*>(t.data)[0];
        x = static_cast<const unsigned char*>(t.data)[bytes - 1];
        (void)x;
      }
      (void)t.shape_str();
    }
  } catch (const mla::Error&) {
  }
  return 0;
}
