// NumPy .npy files: read (format versions 1.0, 2.0 and 3.0; little-endian, C order) and write
// (version 1.0, or 2.0 when the header needs it). Types: float32, float16, int8, int32, uint16 (the
// raw bits of bf16). Every problem with a file is an mla::Error naming the file and the problem.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "mla/dtype.h"
#include "mla/export.h"

namespace mla {

struct MLA_API NpyArray {
  DType dtype = DType::f32;          // f32, f16, i8, i32 or u16
  std::vector<int64_t> shape;        // C order
  std::vector<unsigned char> bytes;  // numel * dtype_size

  int64_t numel() const;
  template <class T> T* as() { return reinterpret_cast<T*>(bytes.data()); }
  template <class T> const T* as() const { return reinterpret_cast<const T*>(bytes.data()); }
  std::string shape_str() const;  // "[2, 3, 576]"
};

// Reads a whole .npy file. Throws mla::Error("<path>: <problem>") for a missing, truncated or
// malformed file, a big-endian or Fortran-order array, or an unsupported dtype.
MLA_API NpyArray read_npy(const std::string& path);

// Reads and checks dtype and rank/extents (-1 matches any extent); errors name the file.
MLA_API NpyArray read_npy(const std::string& path, DType want_dtype,
                          const std::vector<int64_t>& want_shape);

// Writes atomically: to a temporary file beside `path`, renamed into place when complete.
MLA_API void write_npy(const std::string& path, DType dtype, const std::vector<int64_t>& shape,
                       const void* data);

}  // namespace mla
