// libFuzzer target for the config.json reader (src/io/model_config.cc): any text must either parse
// into a ModelConfig or be refused with mla::Error (never a crash, a sanitizer report, a JSON
// library exception escaping as an "internal error", or a hang). Built and run by scripts/fuzz.sh.
#include <cstdint>
#include <string>

#include "mla/model.h"
#include "mla/status.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    (void)mla::parse_model_config(std::string(reinterpret_cast<const char*>(data), size), "fuzz");
  } catch (const mla::Error&) {
  }
  return 0;
}
