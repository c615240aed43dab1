// Tensor views: C-order strides, strided views, shape checks that name the tensor.
#include <gtest/gtest.h>

#include <numeric>

#include "mla/status.h"
#include "mla/tensor.h"

namespace mla {
namespace {

TEST(TensorView, ContiguousStridesAndIndexing) {
  std::vector<int> v(2 * 3 * 4);
  std::iota(v.begin(), v.end(), 0);
  TensorView<int, 3> t(v.data(), {2, 3, 4});
  EXPECT_EQ(t.stride[0], 12);
  EXPECT_EQ(t.stride[1], 4);
  EXPECT_EQ(t.stride[2], 1);
  EXPECT_EQ(t.numel(), 24);
  EXPECT_EQ(t(1, 2, 3), 23);
  EXPECT_EQ(t(1, 0, 2), 14);
  EXPECT_TRUE(t.contiguous());
  t(0, 1, 1) = -5;
  EXPECT_EQ(v[5], -5);
}

TEST(TensorView, StridedViewIsNotContiguous) {
  std::vector<float> v(4 * 6, 0.f);
  // Every other column of a 4 x 6 matrix.
  TensorView<float, 2> cols(v.data() + 1, {4, 3}, {6, 2});
  cols(2, 1) = 9.f;
  EXPECT_EQ(v[2 * 6 + 1 + 2], 9.f);
  EXPECT_FALSE(cols.contiguous());
}

TEST(TensorView, ShapeCheckNamesTheTensor) {
  std::vector<float> v(10 * 576);
  TensorView<float, 2> q(v.data(), {10, 576});
  EXPECT_NO_THROW(q.check_shape("q", {-1, 576}));
  try {
    q.check_shape("q", {10, 512});
    FAIL() << "accepted a wrong shape";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "q: dimension 1 is 576, expected 512");
  }
}

}  // namespace
}  // namespace mla
