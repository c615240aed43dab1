// Tensors of Hugging Face checkpoints: the safetensors format (read by memory-mapping, written for
// tests and demos) and a model directory (`model.safetensors`, or shards named by
// `model.safetensors.index.json`). Only the tensors asked for are touched; shards are opened when
// one of their tensors is first asked for.
//
//   file = u64 LE header_len | header (JSON) | data
//   header: {"name": {"dtype": "BF16", "shape": [r, c], "data_offsets": [begin, end]}, ...,
//            "__metadata__": {...}}   offsets relative to the start of data, end exclusive
//
// Every problem (bad header length or JSON, offsets outside the data or overlapping, a size that
// does not match dtype x shape, a truncated file, a missing tensor or shard) is an mla::Error
// naming the file and, where there is one, the tensor.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "mla/export.h"

namespace mla {

// The element types the layer reads; anything else is kept as `other` and refused when used.
enum class StDType { bf16, f16, f32, f8_e4m3, other };
MLA_API const char* st_dtype_name(StDType t);  // "BF16", "F16", "F32", "F8_E4M3", "other"
MLA_API size_t st_dtype_size(StDType t);       // 0 for other

// One tensor of a safetensors file: name, dtype, shape and a pointer into the mapped file.
struct MLA_API StTensor {
  std::string name, file;  // file: where it lives ("<memory>" for tensors added in memory)
  StDType dtype = StDType::other;
  std::string dtype_str;   // as the header spells it
  std::vector<int64_t> shape;
  const void* data = nullptr;
  int64_t numel() const;
  std::string shape_str() const;  // "[7168, 1536]"
};

class SafetensorsFile;  // one memory-mapped file with its parsed header (src/io/safetensors.cc)

// A set of named tensors: a model directory, a single file, or tensors added in memory.
class MLA_API TensorStore {
 public:
  TensorStore();
  ~TensorStore();
  TensorStore(const TensorStore&);
  TensorStore& operator=(const TensorStore&);

  // `dir` holds model.safetensors.index.json (shards) or model.safetensors. The index is read
  // now; each shard is opened and checked when first used.
  static TensorStore open_dir(const std::string& dir);
  static TensorStore open_file(const std::string& path);

  // Adds a tensor held in memory (demo weights); bytes must be numel x dtype size.
  void add(const std::string& name, StDType dtype, const std::vector<int64_t>& shape,
           std::vector<unsigned char> bytes);

  bool has(const std::string& name) const;
  // The tensor; throws naming the tensor (and the file or index) when it is missing.
  StTensor get(const std::string& name) const;
  // The tensor checked against a shape (exact) and a set of allowed dtypes.
  StTensor get(const std::string& name, const std::vector<int64_t>& shape,
                 const std::vector<StDType>& dtypes) const;
  std::string where() const;  // the directory or file, for messages

 private:
  struct State;
  std::shared_ptr<State> s_;
};

// Writes a safetensors file (atomically: a temporary file renamed into place).
struct StTensorData {
  std::string name;
  StDType dtype = StDType::f32;
  std::vector<int64_t> shape;
  const void* data = nullptr;  // numel x dtype size bytes
};
MLA_API void write_safetensors(const std::string& path, const std::vector<StTensorData>& tensors);

// float8_e4m3fn codes (F8_E4M3 tensors): mla/dtype.h's fp8e4m3_to_f32 / f32_to_fp8e4m3.

}  // namespace mla
