// `mla decode --kv-rotate` / `--fp8-scale` and `mla layer` / `mla demo --kv-rotate` from the
// command line (issue 20): with a rotated cache, q_used.npy and kv_used.npy come back in the
// original space, so a float64 reference on them reproduces o.npy and lse.npy within DESIGN §6
// (the kernel alone); a bad rotation or fp8 scale exits 2 naming the value.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "mla/attention.h"
#include "mla/npy.h"
#include "ref/compare.h"
#include "ref/reference.h"
#include "harness/random_case.h"

namespace mla {
namespace {

namespace fs = std::filesystem;

struct CliRun {
  int code = -1;
  std::string out, err;
};

std::string slurp(const fs::path& p) {
  std::ifstream f(p);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

CliRun run_cli(const std::string& args, const fs::path& work) {
  const char* cli = std::getenv("MLA_CLI");
  if (!cli || !*cli) {
    ADD_FAILURE() << "MLA_CLI is not set (ctest sets it to the mla executable)";
    return {};
  }
  const std::string cmd = std::string(cli) + " " + args + " >" + (work / "o.txt").string() +
                          " 2>" + (work / "e.txt").string();
  const int st = std::system(cmd.c_str());
  return {.code = WIFEXITED(st) ? WEXITSTATUS(st) : -1, .out = slurp(work / "o.txt"),
          .err = slurp(work / "e.txt")};
}

fs::path temp_dir(const std::string& name) {
  const fs::path d = fs::temp_directory_path() / ("mla_cli_rotation_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

TEST(CliRotation, UsedFilesAreInTheOriginalSpace) {
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE(seed);
  const fs::path dir = temp_dir("files");
  const int B = 2, Q = 2, H = 8, bs = 16, nb = 9;
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> q(size_t(B) * Q * H * kQkDim), kv(size_t(nb) * bs * kQkDim);
  for (float& x : q) x = 0.1f * nd(rng);
  for (size_t i = 0; i < kv.size(); ++i) kv[i] = nd(rng) * (i % kQkDim % 64 == 5 ? 15.f : 1.f);
  const std::vector<int32_t> bt = {3, 0, 7, 5, 1, 2, 8, 4}, sl = {40, 60};
  write_npy((dir / "q.npy").string(), DType::f32, {B, Q, H, kQkDim}, q.data());
  write_npy((dir / "kv.npy").string(), DType::f32, {nb, bs, kQkDim}, kv.data());
  write_npy((dir / "block_table.npy").string(), DType::i32, {B, 4}, bt.data());
  write_npy((dir / "seq_lens.npy").string(), DType::i32, {B}, sl.data());
  const DecodeParams p{.batch = B, .q_len = Q, .num_heads = H, .softmax_scale = default_softmax_scale(),
                       .causal = true, .seq_lens = sl.data(), .block_table = bt.data(),
                       .max_blocks_per_seq = 4};
  const int64_t rows = int64_t(B) * Q * H;
  for (const char* fmt : {"--kv-dtype int8", "--kv-dtype int8 --kv-scale group64",
                          "--kv-dtype int8 --kv-scale tensor", "--kv-dtype fp8",
                          "--kv-dtype fp8 --fp8-scale pow2", "--kv-dtype bf16"}) {
    SCOPED_TRACE(fmt);
    const CliRun r = run_cli(std::string("decode --in ") + dir.string() + " --out " + (dir / "out").string() +
                              " --threads 2 --kv-rotate hadamard " + fmt + " --kv-original " +
                              (dir / "kv.npy").string(), dir);
    ASSERT_EQ(r.code, 0) << r.out << r.err;
    EXPECT_NE(r.out.find("+ hadamard"), std::string::npos) << r.out;
    const NpyArray o = read_npy((dir / "out/o.npy").string()), lse = read_npy((dir / "out/lse.npy").string());
    const NpyArray qu = read_npy((dir / "out/q_used.npy").string()), ku = read_npy((dir / "out/kv_used.npy").string());
    std::vector<double> ro(rows * kLatentDim), rl(rows);
    ref::decode_original(p, qu.as<float>(), ku.as<float>(), nb, bs, ro.data(), rl.data());
    const KvDType kt = std::string(fmt).find("int8") != std::string::npos ? KvDType::int8
                       : std::string(fmt).find("fp8") != std::string::npos ? KvDType::fp8 : KvDType::bf16;
    const ref::Comparison c = ref::compare(o.as<float>(), lse.as<float>(), ro.data(), rl.data(), rows,
                                           kLatentDim, ref::tolerance_for(kt, false));
    EXPECT_TRUE(c.pass) << c.summary();
    // kv_used is near kv itself (not near kv R), its rope part the bf16 of kv's.
    double e = 0, n = 0;
    for (int64_t s : {int64_t(3) * bs + 2, int64_t(8) * bs + 5})
      for (int d = 0; d < kQkDim; ++d) {
        const float u = ku.as<float>()[s * kQkDim + d], x = kv[s * kQkDim + d];
        if (d >= kLatentDim) {
          ASSERT_EQ(u, bf16_to_f32(f32_to_bf16(x))) << s << " " << d;
        }
        e += (u - x) * (u - x);
        n += x * x;
      }
    EXPECT_LT(std::sqrt(e / n), kt == KvDType::bf16 ? 1e-2 : 6e-2);
    // q_used likewise near q.
    double eq = 0, nq = 0;
    for (int64_t i = 0; i < rows * kQkDim; ++i) {
      eq += std::pow(qu.as<float>()[i] - q[i], 2);
      nq += double(q[i]) * q[i];
    }
    EXPECT_LT(std::sqrt(eq / nq), 2e-2);
  }
  fs::remove_all(dir);
}

TEST(CliRotation, RandomCasesPassWithRotation) {
  const fs::path dir = temp_dir("random");
  for (const char* fmt : {"--kv-dtype int8 --kv-scale token", "--kv-dtype int8 --kv-scale group32",
                          "--kv-dtype fp8", "--kv-dtype fp16"}) {
    const CliRun r = run_cli(std::string("decode --random 3 --batch 2 --heads 16 --context 300 --block-size 1 "
                                      "--threads 2 --kv-rotate hadamard ") + fmt, dir);
    EXPECT_EQ(r.code, 0) << fmt << "\n" << r.out << r.err;
    EXPECT_NE(r.out.find("PASS"), std::string::npos) << r.out;
  }
  fs::remove_all(dir);
}

TEST(CliRotation, BadValuesExitTwoNamingThem) {
  const fs::path dir = temp_dir("bad");
  struct Bad {
    std::string args, value;
  };
  for (const Bad& b : {Bad{"decode --random 1 --kv-rotate sideways", "sideways"},
                       Bad{"decode --random 1 --kv-dtype fp8 --fp8-scale roughly", "roughly"},
                       Bad{"layer --model /nonexistent --hidden x.npy --out y --kv-rotate diagonal", "diagonal"},
                       Bad{"demo --preset deepseek-v2-lite --kv-rotate upside", "upside"}}) {
    const CliRun r = run_cli(b.args, dir);
    EXPECT_EQ(r.code, 2) << b.args << "\n" << r.err;
    EXPECT_NE(r.err.find("'" + b.value + "'"), std::string::npos) << b.args << "\n" << r.err;
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace mla
