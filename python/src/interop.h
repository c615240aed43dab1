// DLPack / buffer-protocol interop of the Python module: the Array view every argument arrives
// as, the checks of dtype and shape that name the argument, contiguous copies, and the NumPy
// arrays results leave as. Separate from the bindings so that every binding file (FlashMLA calls,
// Layer, LatentCache) reads and checks arrays the one same way.
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "mla/dtype.h"

namespace mla_py {

namespace nb = nanobind;

constexpr uint8_t kFloat = uint8_t(nb::dlpack::dtype_code::Float);
constexpr uint8_t kInt = uint8_t(nb::dlpack::dtype_code::Int);
constexpr uint8_t kUInt = uint8_t(nb::dlpack::dtype_code::UInt);
constexpr uint8_t kBfloat = uint8_t(nb::dlpack::dtype_code::Bfloat);

// A CPU array argument: through the buffer protocol when the object has it (NumPy: a fraction
// of a microsecond), otherwise through DLPack (PyTorch, other producers: about a microsecond
// each, a Python method call and a capsule). Strides in elements, as nb::ndarray's.
class Array {
 public:
  Array() = default;
  Array(nb::handle h, const char* arg, bool writable = false) {
    if (PyObject_CheckBuffer(h.ptr()) &&
        PyObject_GetBuffer(h.ptr(), &buf_, writable ? PyBUF_RECORDS : PyBUF_RECORDS_RO) == 0) {
      have_buf_ = true;
      if (from_buffer()) return;
      PyBuffer_Release(&buf_);
      have_buf_ = false;
    }
    PyErr_Clear();
    bool ok = writable ? nb::try_cast(h, rw_) : nb::try_cast(h, ro_);
    if (!ok)
      throw nb::type_error((std::string(arg) + " is a " + nb::type_name(h.type()).c_str() +
                            (writable ? "; expected a writable CPU array" : "; expected a CPU array "
                             "(NumPy, torch or another DLPack producer)")).c_str());
    const auto take = [&](auto& a) {
      data_ = const_cast<void*>(static_cast<const void*>(a.data()));
      ndim_ = a.ndim();
      dtype_ = a.dtype();
      for (size_t i = 0; i < ndim_ && i < kMaxDim; ++i) {
        shape_[i] = a.shape(i);
        stride_[i] = a.stride(i);
      }
    };
    if (writable) take(rw_); else take(ro_);
    if (ndim_ > kMaxDim)
      throw nb::value_error((std::string(arg) + " has " + std::to_string(ndim_) + " dimensions").c_str());
  }
  Array(const Array&) = delete;
  Array& operator=(const Array&) = delete;
  Array(Array&& o) noexcept { *this = std::move(o); }
  Array& operator=(Array&& o) noexcept {
    std::swap(buf_, o.buf_);
    std::swap(have_buf_, o.have_buf_);
    ro_ = std::move(o.ro_);
    rw_ = std::move(o.rw_);
    data_ = o.data_; ndim_ = o.ndim_; dtype_ = o.dtype_; shape_ = o.shape_; stride_ = o.stride_;
    return *this;
  }
  ~Array() { if (have_buf_) PyBuffer_Release(&buf_); }

  size_t ndim() const { return ndim_; }
  size_t shape(size_t i) const { return shape_[i]; }
  int64_t stride(size_t i) const { return stride_[i]; }
  nb::dlpack::dtype dtype() const { return dtype_; }
  size_t itemsize() const { return dtype_.bits / 8; }
  size_t size() const {
    size_t n = 1;
    for (size_t i = 0; i < ndim_; ++i) n *= shape_[i];
    return n;
  }
  const void* data() const { return data_; }
  void* mutable_data() const { return data_; }

 private:
  static constexpr size_t kMaxDim = 8;
  // The buffer's format as a DLPack dtype; false for what DLPack cannot say (big-endian,
  // structured, odd strides), which then goes the DLPack way.
  bool from_buffer() {
    const char* f = buf_.format ? buf_.format : "B";
    if (*f == '<' || *f == '=' || *f == '@') ++f;
    if (f[0] == 0 || f[1] != 0 || buf_.ndim > int(kMaxDim) || buf_.itemsize <= 0) return false;
    uint8_t code;
    switch (*f) {
      case 'e': case 'f': case 'd': code = kFloat; break;
      case 'b': case 'h': case 'i': case 'l': case 'q': code = kInt; break;
      case 'B': case 'H': case 'I': case 'L': case 'Q': code = kUInt; break;
      default: return false;
    }
    dtype_ = nb::dlpack::dtype{code, uint8_t(buf_.itemsize * 8), 1};
    data_ = buf_.buf;
    ndim_ = size_t(buf_.ndim);
    for (size_t i = 0; i < ndim_; ++i) {
      shape_[i] = size_t(buf_.shape[i]);
      if (buf_.strides[i] % buf_.itemsize) return false;
      stride_[i] = buf_.strides[i] / buf_.itemsize;
    }
    return true;
  }
  Py_buffer buf_{};
  bool have_buf_ = false;
  nb::ndarray<nb::ro, nb::device::cpu> ro_;
  nb::ndarray<nb::device::cpu> rw_;
  void* data_ = nullptr;
  size_t ndim_ = 0;
  nb::dlpack::dtype dtype_{};
  std::array<size_t, kMaxDim> shape_{};
  std::array<int64_t, kMaxDim> stride_{};
};

std::string shape_str(const Array& a);
std::string dtype_str(nb::dlpack::dtype t);

// The element type of a float array: f32, f16 or bf16. NumPy has no bf16 of its own; the Python
// layer passes an ml_dtypes.bfloat16 array as its uint16 view with bf16_bits = true.
mla::DType float_type(const Array& a, bool bf16_bits, const char* arg);
void require_int32(const Array& a, const char* arg);
// `want`: one extent per dimension, -1 for any.
void require_shape(const Array& a, const char* arg, std::initializer_list<int64_t> want);

// A C-contiguous view of `a`: its own memory when it already is (zero-copy), otherwise one copy
// into `hold`.
const void* contiguous(const Array& a, std::vector<uint8_t>& hold);

// A new NumPy array owned by a capsule.
struct OutBuffer {
  std::unique_ptr<uint8_t[]> mem;
  std::vector<size_t> shape;
  mla::DType type;
  static OutBuffer make(std::vector<size_t> shape, mla::DType t) {
    size_t n = 1;
    for (size_t s : shape) n *= s;
    return {std::unique_ptr<uint8_t[]>(new uint8_t[n * mla::dtype_size(t) + 1]), std::move(shape), t};
  }
  template <class T> T* as() { return reinterpret_cast<T*>(mem.get()); }
  nb::object release() {
    uint8_t* p = mem.release();
    nb::capsule owner(p, [](void* q) noexcept { delete[] static_cast<uint8_t*>(q); });
    nb::dlpack::dtype dt;
    dt.lanes = 1;
    dt.bits = uint8_t(mla::dtype_size(type) * 8);
    dt.code = type == mla::DType::f32 || type == mla::DType::f16 ? kFloat
              : kUInt;
    return nb::cast(nb::ndarray<nb::numpy>(p, shape.size(), shape.data(), owner, nullptr, dt));
  }
};


// A NumPy copy of n = prod(shape) values.
template <class T>
nb::object numpy_copy(const T* src, std::vector<size_t> shape) {
  size_t n = 1;
  for (size_t s : shape) n *= s;
  auto* p = new T[n + 1];
  std::memcpy(p, src, n * sizeof(T));
  nb::capsule owner(p, [](void* q) noexcept { delete[] static_cast<T*>(q); });
  return nb::cast(nb::ndarray<nb::numpy, T>(p, shape.size(), shape.data(), owner));
}

// Takes `m` for the calling thread, which holds the GIL: at once when it is free, otherwise with
// the GIL released while waiting, so that a thread holding `m` (a decode that runs without the GIL)
// is never waited for by one that holds the GIL it may need. Returns with the GIL held again.
template <class Mutex>
std::unique_lock<Mutex> lock_releasing_gil(Mutex& m) {
  std::unique_lock<Mutex> lock(m, std::try_to_lock);
  if (!lock.owns_lock()) {
    nb::gil_scoped_release unlocked;
    lock.lock();
  }
  return lock;
}

}  // namespace mla_py
