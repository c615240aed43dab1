// `mla layer` and `mla demo` end to end: the real binary (MLA_CLI) on checkpoints written here,
// o.npy checked against the float64 un-absorbed reference; every refusal exits 2 with the value
// named and writes nothing.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "mla/model.h"
#include "mla/npy.h"
#include "ref/layer_ref.h"
#include "harness/random_case.h"
#include "harness/tiny_model.h"

namespace mla {
namespace {

namespace fs = std::filesystem;

struct CliRun {
  int code = -1;
  std::string out, err;
};

CliRun run_cli(const std::string& args, const std::string& work) {
  const char* cli = std::getenv("MLA_CLI");
  if (!cli || !*cli) {
    ADD_FAILURE() << "MLA_CLI is not set (ctest sets it to the mla executable)";
    return {};
  }
  const std::string o = work + "/stdout.txt", e = work + "/stderr.txt";
  const int st = std::system((std::string(cli) + " " + args + " >" + o + " 2>" + e).c_str());
  CliRun r;
  r.code = WIFEXITED(st) ? WEXITSTATUS(st) : 128;
  std::stringstream so, se;
  so << std::ifstream(o).rdbuf();
  se << std::ifstream(e).rdbuf();
  r.out = so.str();
  r.err = se.str();
  return r;
}

struct Fixture {
  std::string dir, model, hidden, lens, out;
  int B = 3, T = 40, D = 256;
  std::vector<float> h;
  std::vector<int32_t> l{40, 17, 25};
  explicit Fixture(const test::TinyModelSpec& spec, uint64_t seed) {
    dir = test::make_temp_dir("cli-layer");
    model = dir + "/model";
    test::TinyModelSpec s = spec;
    s.seed = seed;
    test::write_tiny_model(model, s);
    D = s.hidden;
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> nd;
    h.resize(size_t(B) * T * D);
    for (float& x : h) x = nd(rng);
    hidden = dir + "/hidden.npy";
    lens = dir + "/lens.npy";
    out = dir + "/out";
    write_npy(hidden, DType::f32, {B, T, D}, h.data());
    write_npy(lens, DType::i32, {B}, l.data());
  }
  ~Fixture() {
    if (!::testing::Test::HasFailure()) fs::remove_all(dir);
  }
};

TEST(CliLayer, MatchesTheFloat64Reference) {
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  test::TinyModelSpec spec;
  spec.shards = 2;
  spec.dtype = StDType::f8_e4m3;
  for (const char* kv : {"bf16", "int8"}) {
    Fixture f(spec, seed);
    const int Q = 2;
    const CliRun r = run_cli("layer --model " + f.model + " --layer 1 --hidden " + f.hidden + " --lens " +
                              f.lens + " --q-len 2 --kv-dtype " + kv + " --block-size 16 --threads 2 --out " + f.out,
                          f.dir);
    ASSERT_EQ(r.code, 0) << r.out << r.err;
    const NpyArray o = read_npy(f.out + "/o.npy", DType::f32, {f.B, Q, f.D});
    const ModelConfig cfg = read_model_config(f.model + "/config.json");
    const ref::LayerWeights64 w = ref::load_layer_weights64(cfg, TensorStore::open_dir(f.model), 1);
    double num = 0, den = 0;
    for (int b = 0; b < f.B; ++b) {
      std::vector<double> ref(size_t(Q) * f.D);
      const int P = f.l[b] - Q;
      const float* hb = f.h.data() + size_t(b) * f.T * f.D;
      ref::layer_forward(w, P, hb, nullptr, Q, hb + size_t(P) * f.D, ref.data());
      for (int i = 0; i < Q * f.D; ++i) {
        const double d = o.as<float>()[size_t(b) * Q * f.D + i] - ref[i];
        num += d * d;
        den += ref[i] * ref[i];
      }
    }
    // About 2x the largest of 40 seeds (bf16 5.6e-3, int8 2.4e-2; test_layer.cc says why int8 is
    // looser than DESIGN §6 end to end).
    const double rel = std::sqrt(num / den);
    std::printf("  %s cache: rel %.2e\n", kv, rel);
    EXPECT_LT(rel, std::string(kv) == "int8" ? 5e-2 : 1.5e-2) << kv;
  }
}

TEST(CliLayer, RefusalsExit2NameTheValueAndWriteNothing) {
  const uint64_t seed = test::test_seed();
  test::TinyModelSpec spec;
  spec.shards = 2;
  Fixture f(spec, seed);
  const std::string base = "layer --model " + f.model + " --hidden " + f.hidden + " --out " + f.out;
  auto refused = [&](const std::string& args, const std::string& needle) {
    const CliRun r = run_cli(args, f.dir);
    EXPECT_EQ(r.code, 2) << args << "\n" << r.out << r.err;
    EXPECT_NE(r.err.find(needle), std::string::npos) << args << "\n" << r.err;
    EXPECT_FALSE(fs::exists(f.out + "/o.npy")) << args;
  };
  refused(base + " --q-len 41", "lens[0] = 40 is outside [--q-len 41");
  refused(base + " --lens " + f.lens + " --q-len 18", "lens[1] = 17");
  refused(base + " --layer 2", "--layer 2 is outside the model's 2 layers");
  refused(base + " --kv-dtype int4", "int4");
  refused(base + " --block-size 0", "--block-size 0");
  const std::vector<int32_t> long_lens{40, 41, 3};
  write_npy(f.dir + "/long.npy", DType::i32, {3}, long_lens.data());
  refused(base + " --lens " + f.dir + "/long.npy", "lens[1] = 41");
  std::vector<float> wrong(size_t(2) * 5 * 100);
  write_npy(f.dir + "/wrong.npy", DType::f32, {2, 5, 100}, wrong.data());
  refused("layer --model " + f.model + " --hidden " + f.dir + "/wrong.npy --out " + f.out, "wrong.npy");
  // A shard cut short, then a shard missing: refused naming the file and the tensor. (Layer 1
  // lives in the second shard; layer 0 runs without it, since only the layer's shards are read.)
  const std::string shard = f.model + "/model-00002-of-00002.safetensors";
  fs::copy_file(shard, f.dir + "/shard.bak");
  fs::resize_file(shard, fs::file_size(shard) - 100);
  refused(base + " --layer 1", "truncated");
  fs::remove(shard);
  refused(base + " --layer 1", "model-00002-of-00002.safetensors, which does not exist");
  EXPECT_EQ(run_cli(base + " --layer 0", f.dir).code, 0);
  fs::remove_all(f.out);
  fs::copy_file(f.dir + "/shard.bak", shard);
  // And with everything restored it runs.
  const CliRun ok = run_cli(base + " --layer 1", f.dir);
  EXPECT_EQ(ok.code, 0) << ok.err;
  EXPECT_TRUE(fs::exists(f.out + "/o.npy"));
}

TEST(CliDemo, RunsACheckpointAndAPresetAndChecksItself) {
  const uint64_t seed = test::test_seed();
  test::TinyModelSpec spec;
  spec.q_lora_rank = 0;
  Fixture f(spec, seed);
  CliRun r = run_cli("demo --model " + f.model + " --layer 1 --batch 3 --context 70 --q-len 2 --steps 3 --threads 2", f.dir);
  EXPECT_EQ(r.code, 0) << r.out << r.err;
  for (const char* part : {"preprocess", "attention", "einsum + o_proj", "step", "floor",
                           "decode plan: made once per step and reused", "PASS"})
    EXPECT_NE(r.out.find(part), std::string::npos) << part << "\n" << r.out;
  EXPECT_NE(r.err.find("step 3/3"), std::string::npos) << r.err;
  r = run_cli("demo --preset deepseek-v2-lite --context 64 --steps 1 --kv-dtype int8 --threads 2", f.dir);
  EXPECT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("16 heads, hidden 2048, q_lora 0"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("PASS"), std::string::npos) << r.out;
  r = run_cli("demo --preset deepseek-v4", f.dir);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("deepseek-v4"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace mla
