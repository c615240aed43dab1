// For fuzz targets whose reader takes a path (read_npy, TensorStore::open_file, which memory-maps
// it): the input is written to a file of this process, in $MLA_FUZZ_TMP or else /dev/shm.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace mla::fuzz {

// Writes data to "<dir>/mla_fuzz_<tag>_<pid><ext>" and returns that path (the same on every call
// of one process). Aborts if the file cannot be written: that is the harness failing, not the
// reader.
inline const std::string& write_input_file(const char* tag, const char* ext, const uint8_t* data,
                                           size_t size) {
  static const std::string path = [&] {
    const char* dir = std::getenv("MLA_FUZZ_TMP");
    return std::string(dir && *dir ? dir : "/dev/shm") + "/mla_fuzz_" + tag + "_" +
           std::to_string(::getpid()) + ext;
  }();
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) std::abort();
  if (size && std::fwrite(data, 1, size, f) != size) std::abort();
  std::fclose(f);
  return path;
}

}  // namespace mla::fuzz
