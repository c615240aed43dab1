// Non-owning tensor views: a pointer, a shape and strides (in elements), with checked indexing in
// debug builds and a shape check that names the tensor in its error.
#pragma once

#include <array>
#include <cassert>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "mla/status.h"

namespace mla {

template <class T, int Rank>
struct TensorView {
  T* data = nullptr;
  std::array<int64_t, Rank> shape{};
  std::array<int64_t, Rank> stride{};

  TensorView() = default;
  // Contiguous, C order.
  TensorView(T* d, std::array<int64_t, Rank> s) : data(d), shape(s) {
    int64_t st = 1;
    for (int i = Rank - 1; i >= 0; --i) {
      stride[i] = st;
      st *= shape[i];
    }
  }
  TensorView(T* d, std::array<int64_t, Rank> s, std::array<int64_t, Rank> st)
      : data(d), shape(s), stride(st) {}

  int64_t numel() const {
    int64_t n = 1;
    for (auto s : shape) n *= s;
    return n;
  }
  int64_t size(int i) const { return shape[i]; }

  template <class... I>
  T& operator()(I... idx) const {
    static_assert(sizeof...(I) == Rank, "wrong number of indices");
    const int64_t ix[] = {int64_t(idx)...};
    int64_t off = 0;
    for (int i = 0; i < Rank; ++i) {
      assert(ix[i] >= 0 && ix[i] < shape[i]);
      off += ix[i] * stride[i];
    }
    return data[off];
  }

  // Throws mla::Error naming `what` unless the shape is `want` (-1 matches any extent).
  void check_shape(const std::string& what, std::array<int64_t, Rank> want) const {
    for (int i = 0; i < Rank; ++i)
      MLA_CHECK(want[i] < 0 || want[i] == shape[i],
                what << ": dimension " << i << " is " << shape[i] << ", expected " << want[i]);
  }
  bool contiguous() const {
    int64_t st = 1;
    for (int i = Rank - 1; i >= 0; --i) {
      if (shape[i] != 1 && stride[i] != st) return false;
      st *= shape[i];
    }
    return true;
  }
};

}  // namespace mla
