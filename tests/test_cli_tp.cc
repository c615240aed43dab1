// `mla layer --tp N` and `mla demo --tp N` under mpirun (issue 24): N ranks on this machine, each
// with H/N heads, give the single-process output within float rounding (fp32 all-reduce); every
// refusal and failure ends all ranks with the error within 10 s and writes nothing. Skipped where
// the build has no MPI (MLA_MPIRUN empty: CMake found none, or the sanitized build).
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "harness/random_case.h"
#include "harness/tiny_model.h"
#include "mla/npy.h"

namespace mla {
namespace {

namespace fs = std::filesystem;

struct CliRun {
  int code = -1;
  double seconds = 0;
  std::string out, err;
};

// prefix + MLA_CLI + args, under `timeout 60` so a hang fails the test instead of stalling it.
CliRun run(const std::string& prefix, const std::string& args, const std::string& work) {
  const char* cli = std::getenv("MLA_CLI");
  if (!cli || !*cli) {
    ADD_FAILURE() << "MLA_CLI is not set (ctest sets it to the mla executable)";
    return {};
  }
  const std::string o = work + "/stdout.txt", e = work + "/stderr.txt";
  const auto t0 = std::chrono::steady_clock::now();
  const int st =
      std::system(("timeout 60 " + prefix + " " + cli + " " + args + " >" + o + " 2>" + e).c_str());
  CliRun r;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.code = WIFEXITED(st) ? WEXITSTATUS(st) : 128;
  std::stringstream so, se;
  so << std::ifstream(o).rdbuf();
  se << std::ifstream(e).rdbuf();
  r.out = so.str();
  r.err = se.str();
  return r;
}

// CMake's mpirun line for this machine (CMakeLists.txt: MLA_MPIRUN), empty without MPI.
std::string mpirun(int np) { return std::string(MLA_MPIRUN_LINE) + " -np " + std::to_string(np); }

class CliTp : public ::testing::Test {
 protected:
  void SetUp() override {
    if (std::string(MLA_MPIRUN_LINE).empty()) GTEST_SKIP() << "built without MPI: no mpirun tests";
  }
};

struct Inputs {
  std::string dir, model, hidden, lens;
  int B = 3, T = 40, D = 256;
  Inputs(const test::TinyModelSpec& spec, uint64_t seed) {
    dir = test::make_temp_dir("cli-tp");
    model = dir + "/model";
    test::TinyModelSpec s = spec;
    s.seed = seed;
    test::write_tiny_model(model, s);
    D = s.hidden;
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> nd;
    std::vector<float> h(size_t(B) * T * D);
    for (float& x : h) x = nd(rng);
    const std::vector<int32_t> l{40, 17, 25};  // uneven
    hidden = dir + "/hidden.npy";
    lens = dir + "/lens.npy";
    write_npy(hidden, DType::f32, {B, T, D}, h.data());
    write_npy(lens, DType::i32, {B}, l.data());
  }
  ~Inputs() {
    if (!::testing::Test::HasFailure()) fs::remove_all(dir);
  }
  std::string layer_args(const std::string& out) const {
    return "layer --model " + model + " --layer 1 --hidden " + hidden + " --lens " + lens +
           " --q-len 2 --block-size 16 --threads 1 --out " + out;
  }
};

double rel_diff(const std::string& a, const std::string& b, int64_t n) {
  const NpyArray x = read_npy(a, DType::f32, {-1, -1, -1}),
                 y = read_npy(b, DType::f32, {-1, -1, -1});
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = double(x.as<float>()[i]) - y.as<float>()[i];
    num += d * d;
    den += double(y.as<float>()[i]) * y.as<float>()[i];
  }
  return std::isfinite(num) ? std::sqrt(num / den) : INFINITY;
}

TEST_F(CliTp, LayerEqualsOneProcess) {
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const Inputs in({}, seed);
  for (const char* kv : {"bf16", "int8"}) {
    const std::string one = in.dir + "/one-" + kv;
    CliRun r = run("", in.layer_args(one) + " --kv-dtype " + kv, in.dir);
    ASSERT_EQ(r.code, 0) << r.out << r.err;
    for (int np : {2, 4}) {
      if (np == 4 && std::string(kv) == "int8") continue;  // 4 ranks once is enough for the CI time
      const std::string tp = in.dir + "/tp" + std::to_string(np) + "-" + kv;
      r = run(mpirun(np), in.layer_args(tp) + " --kv-dtype " + kv + " --tp " + std::to_string(np),
              in.dir);
      ASSERT_EQ(r.code, 0) << r.out << r.err;
      EXPECT_NE(r.out.find("tp " + std::to_string(np) + " (" + std::to_string(4 / np) +
                           " heads per rank)"),
                std::string::npos)
          << r.out;
      EXPECT_NE(r.out.find("all-reduce"), std::string::npos) << r.out;
      const double d = rel_diff(tp + "/o.npy", one + "/o.npy", int64_t(in.B) * 2 * in.D);
      std::printf("  %s cache, %d ranks vs one process: rel %.2e\n", kv, np, d);
      EXPECT_LT(d, 1e-5) << kv << " np " << np;
    }
  }
}

TEST_F(CliTp, DemoPrintsTheAllReduceRowAndPasses) {
  const uint64_t seed = test::test_seed();
  const Inputs in({}, seed);
  // The repository's ceilings: measuring them on each rank would take ~10 s of the CI.
  const CliRun r = run(mpirun(2),
                       "demo --model " + in.model +
                           " --layer 1 --batch 2 --context 40 "
                           "--steps 2 --threads 1 --tp 2 --ceilings " MLA_CEILINGS_JSON,
                       in.dir);
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  for (const char* part :
       {"tensor parallel: 2 ranks x 2 heads", "all-reduce", "einsum + o_proj", "PASS"})
    EXPECT_NE(r.out.find(part), std::string::npos) << part << "\n" << r.out;
}

// Every rank fails the same way here; each aborts the group (MPI_Abort), so none is left waiting.
TEST_F(CliTp, RefusalsEndEveryRankQuicklyAndWriteNothing) {
  const uint64_t seed = test::test_seed();
  test::TinyModelSpec spec;
  spec.shards = 2;
  const Inputs in(spec, seed);
  const std::string out = in.dir + "/out";
  auto refused = [&](int np, const std::string& args, const std::string& needle) {
    const CliRun r = run(mpirun(np), in.layer_args(out) + " " + args, in.dir);
    EXPECT_NE(r.code, 0) << args << "\n" << r.out << r.err;
    EXPECT_NE(r.code, 124) << args << ": hung";
    EXPECT_LT(r.seconds, 10) << args;
    EXPECT_NE(r.err.find(needle), std::string::npos) << args << "\n" << r.err;
    EXPECT_FALSE(fs::exists(out + "/o.npy")) << args;
  };
  refused(3, "--tp 3",
          "tensor parallelism over 3 ranks does not divide the model's 4 attention heads");
  refused(2, "--tp 4", "--tp 4 but mpirun started 2 process(es)");
  fs::remove(in.model + "/model-00002-of-00002.safetensors");  // layer 1's tensors live there
  refused(2, "--tp 2", "model-00002-of-00002.safetensors, which does not exist");

  test::TinyModelSpec fp8;
  fp8.dtype = StDType::f8_e4m3;
  const Inputs f8(fp8, seed);
  const CliRun r = run(mpirun(2), f8.layer_args(f8.dir + "/out") + " --tp 2", f8.dir);
  EXPECT_NE(r.code, 0);
  EXPECT_LT(r.seconds, 10);
  EXPECT_NE(r.err.find("q_b_proj: tensor parallelism over 2 ranks splits its 384 rows at 192"),
            std::string::npos)
      << r.err;
  EXPECT_FALSE(fs::exists(f8.dir + "/out/o.npy"));
}

}  // namespace
}  // namespace mla
