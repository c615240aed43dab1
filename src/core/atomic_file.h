// Writing a file all or nothing, the one copy: the bytes go into a temporary file beside `path`
// (`path.tmp.<pid>.<n>`, n counting this process's writes so two threads never share one), which
// is then renamed over `path`. A reader never sees half a file; a failed or killed write leaves
// the previous file as it was (a kill may leave the temporary behind). Used by .npy and
// safetensors output, `mla bench` / `mla sim` reports and the roofline's ceilings.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace mla {

struct ByteRange {
  const void* data;
  size_t size;
};

// Writes the ranges one after another. Throws mla::Error naming `path` and the failing step
// (creating the temporary, writing, renaming) with the system's reason.
void write_file_atomic(const std::string& path, const std::vector<ByteRange>& parts);
void write_file_atomic(const std::string& path, const std::string& text);

}  // namespace mla
