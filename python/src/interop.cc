// Definitions of interop.h: argument checks and the contiguous copy.
#include "interop.h"

#include <string>

namespace mla_py {

std::string shape_str(const Array& a) {
  std::string s = "(";
  for (size_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

std::string dtype_str(nb::dlpack::dtype t) {
  const char* kind = t.code == kFloat ? "float" : t.code == kInt ? "int" : t.code == kUInt ? "uint"
                     : t.code == kBfloat ? "bfloat" : "code";
  return std::string(kind) + std::to_string(t.bits) + (t.lanes != 1 ? "x" + std::to_string(t.lanes) : "");
}

mla::DType float_type(const Array& a, bool bf16_bits, const char* arg) {
  const nb::dlpack::dtype t = a.dtype();
  if (t.lanes == 1) {
    if (t.code == kFloat && t.bits == 32) return mla::DType::f32;
    if (t.code == kFloat && t.bits == 16) return mla::DType::f16;
    if (t.code == kBfloat && t.bits == 16) return mla::DType::bf16;
    if (bf16_bits && t.code == kUInt && t.bits == 16) return mla::DType::bf16;
  }
  throw nb::type_error((std::string(arg) + " has dtype " + dtype_str(t) +
                        "; expected float32, float16 or bfloat16").c_str());
}

void require_int32(const Array& a, const char* arg) {
  const nb::dlpack::dtype t = a.dtype();
  if (!(t.code == kInt && t.bits == 32 && t.lanes == 1))
    throw nb::type_error((std::string(arg) + " has dtype " + dtype_str(t) + "; expected int32").c_str());
}

void require_shape(const Array& a, const char* arg, std::initializer_list<int64_t> want) {
  bool ok = a.ndim() == want.size();
  size_t i = 0;
  for (int64_t w : want) {
    if (ok && w >= 0 && int64_t(a.shape(i)) != w) ok = false;
    ++i;
  }
  if (ok) return;
  std::string w = "(";
  i = 0;
  for (int64_t x : want) w += (i++ ? ", " : "") + (x < 0 ? std::string("any") : std::to_string(x));
  throw nb::value_error((std::string(arg) + ".shape = " + shape_str(a) + "; expected " + w +
                         (want.size() == 1 ? ",)" : ")")).c_str());
}

const void* contiguous(const Array& a, std::vector<uint8_t>& hold) {
  const size_t es = a.itemsize();
  bool cont = true;
  int64_t st = 1;
  for (size_t i = a.ndim(); i-- > 0;) {
    if (a.shape(i) != 1 && a.stride(i) != st) cont = false;
    st *= int64_t(a.shape(i));
  }
  if (cont) return a.data();
  hold.resize(a.size() * es);
  const auto* src = static_cast<const uint8_t*>(a.data());
  std::vector<size_t> idx(a.ndim(), 0);
  for (size_t n = 0; n < a.size(); ++n) {
    int64_t off = 0;
    for (size_t i = 0; i < a.ndim(); ++i) off += int64_t(idx[i]) * a.stride(i);
    std::memcpy(hold.data() + n * es, src + off * int64_t(es), es);
    for (size_t i = a.ndim(); i-- > 0;) {
      if (++idx[i] < a.shape(i)) break;
      idx[i] = 0;
    }
  }
  return hold.data();
}

}  // namespace mla_py
