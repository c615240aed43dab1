// Every numeric parameter of the API is bounded with a clear error (mla::Error naming the value),
// never an overflow, a wrap-around or a multi-gigabyte allocation; .npy shapes that would overflow
// or print megabytes are handled.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>

#include "mla/attention.h"
#include "mla/npy.h"
#include "mla/plan.h"
#include "mla/status.h"
#include "harness/random_case.h"

namespace mla {
namespace {

// The message of the mla::Error fn throws ("" if none).
template <class F>
std::string error_of(F&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Bounds, DecodeOptionsAndShapes) {
  test::CaseSpec s{.batch = 1, .q_len = 1, .heads = 2, .block_size = 16, .seq_lens = {50}};
  test::Case c = test::make_case(s, test::test_seed());
  std::vector<float> o(2 * kLatentDim, 7.f), lse(2, 7.f);
  auto run = [&](DecodeOptions opt) {
    return error_of([&] { decode(c.p, c.q_dtype, c.q16.data(), c.cache, opt, o.data(), lse.data()); });
  };
  for (int chunk : {0, kMaxChunk + 1, 1000000, 33554432, 67108865}) {
    const std::string e = run(DecodeOptions{.chunk = chunk});
    EXPECT_NE(e.find("chunk = " + std::to_string(chunk)), std::string::npos) << chunk << ": " << e;
  }
  for (int threads : {-1, kMaxThreads + 1, std::numeric_limits<int>::max()}) {
    const std::string e = run(DecodeOptions{.threads = threads});
    EXPECT_NE(e.find("threads = " + std::to_string(threads)), std::string::npos) << e;
  }
  EXPECT_EQ(run(DecodeOptions{.threads = 3, .chunk = kMaxChunk}), "");
  DecodeParams p = c.p;
  p.num_heads = kMaxHeads + 1;
  EXPECT_NE(error_of([&] { validate(p, c.cache); }).find("num_heads = 1025"), std::string::npos);
  p = c.p;
  p.q_len = std::numeric_limits<int>::max();
  EXPECT_NE(error_of([&] { validate(p, c.cache); }).find("q_len = "), std::string::npos);
}

TEST(Bounds, PlannerWorkers) {
  const int32_t seq_lens[] = {1000, 7};
  for (int w : {0, kMaxPlanWorkers + 1, std::numeric_limits<int>::max()}) {
    const std::string e = error_of([&] {
      make_plan(PlanInput{.batch = 2, .seq_lens = seq_lens, .q_len = 1, .num_heads = 16, .num_workers = w});
    });
    EXPECT_NE(e.find("num_workers = " + std::to_string(w)), std::string::npos) << e;
  }
  const Plan plan = make_plan(PlanInput{.batch = 2, .seq_lens = seq_lens, .q_len = 1, .num_heads = 16,
                                        .num_workers = kMaxPlanWorkers});
  EXPECT_EQ(plan.num_workers, kMaxPlanWorkers);
}

TEST(Bounds, NpyEmptyArrayWithHugeDimensions) {
  NpyArray a;
  a.dtype = DType::f32;
  a.shape = {int64_t(1) << 62, 4, 0};  // accepted (0 bytes); the product must not overflow
  EXPECT_EQ(a.numel(), 0);
  a.shape = {0, int64_t(1) << 62, int64_t(1) << 62};
  EXPECT_EQ(a.numel(), 0);
}

std::filesystem::path tmp_file(const std::string& name) {
  const char* root = std::getenv("MLA_TEST_TMP");
  const auto dir = (root && *root ? std::filesystem::path(root) : std::filesystem::temp_directory_path()) /
                   ("mla_bounds_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  return dir / name;
}

// A file with 200000 dimensions, not the shape asked for: refused with a message of a few lines,
// not one quoting every dimension.
TEST(Bounds, NpyHugeRankMessageIsShort) {
  for (int rank : {200000}) {
    std::string shape = "(";
    for (int i = 0; i < rank; ++i) shape += "1, ";
    shape += ")";
    std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': " + shape + ", }";
    header.append(64 - (12 + header.size() + 1) % 64, ' ');
    header += '\n';
    const auto path = tmp_file("rank" + std::to_string(rank) + ".npy");
    {
      std::ofstream f(path, std::ios::binary);
      f.write("\x93NUMPY\x02\x00", 8);
      const uint32_t len = uint32_t(header.size());
      f.write(reinterpret_cast<const char*>(&len), 4);
      f << header;
      const float one = 1.f;
      f.write(reinterpret_cast<const char*>(&one), 4);
    }
    const std::string e = error_of([&] { read_npy(path.string(), DType::f32, {-1, 576}); });
    EXPECT_NE(e.find(std::to_string(rank) + " dimensions"), std::string::npos) << e.substr(0, 500);
    EXPECT_LT(e.size(), 1000u) << "message of " << e.size() << " bytes";
    std::filesystem::remove(path);
  }
  // A shape string of many dimensions is shortened too.
  NpyArray a;
  a.shape.assign(100000, 1);
  EXPECT_LT(a.shape_str().size(), 200u);
  EXPECT_NE(a.shape_str().find("100000 dimensions"), std::string::npos) << a.shape_str();
}

}  // namespace
}  // namespace mla
