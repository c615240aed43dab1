// The tensor-parallel layer over MPI (issue 24), run by ctest under mpirun with 2 and 4 ranks on
// one machine (loopback): each rank loads its shard of the heads, and its all-reduced output must
// equal the single-process layer's (which every rank also runs) within float rounding.
//   layer_tp_mpi                 the comparison over test_tp::tp_cases(); exit 1 on any mismatch
//   layer_tp_mpi --fail-rank R   rank R's checkpoint lacks a shard file (a missing tensor): R must
//                                end every rank (the others wait in the all-reduce) with its error
// The seed is rank 0's (MLA_TEST_SEED or fresh), broadcast, and printed.
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <string>

#include "harness/random_case.h"
#include "layer_tp_case.h"
#include "mla/mla_mpi.h"
#include "mla/status.h"

namespace mla {
namespace {

int compare_all(Communicator& g, uint64_t seed) {
  int failures = 0;
  for (const test_tp::TpCase& tc : test_tp::tp_cases()) {
    const std::string dir = test::make_temp_dir("layer-tp-mpi-r" + std::to_string(g.rank()));
    test::TinyModelSpec ms = tc.model;
    ms.seed = seed;
    test::write_tiny_model(dir, ms);
    const ModelConfig cfg = read_model_config(dir + "/config.json");
    const TensorStore store = TensorStore::open_dir(dir);
    const MlaLayer whole(cfg, store, tc.layer);
    const MlaLayer shard(cfg, store, tc.layer, KvRotation::none, LayerWeights::stored, &g);
    const test_tp::StepResult ref = test_tp::run_step(whole, tc, seed, 1);
    const test_tp::StepResult got = test_tp::run_step(shard, tc, seed, 1);
    const test_tp::Diff d = test_tp::diff(got.out, ref.out);
    const bool cache_same =
        std::memcmp(got.cache.data(), ref.cache.data(), ref.cache.size() * sizeof(float)) == 0;
    // fp32 all-reduce: only the order of additions differs (measured up to ~3e-7).
    const bool ok = d.rel < 1e-5 && d.max_elem < 1e-4 && cache_same;
    if (!ok || g.rank() == 0)
      std::printf("  rank %d of %d, %-40s rel %.2e, max element %.2e, cache %s: %s\n", g.rank(),
                  g.size(), tc.name, d.rel, d.max_elem, cache_same ? "same" : "DIFFERS",
                  ok ? "ok" : "FAIL");
    failures += !ok;
    std::filesystem::remove_all(dir);
  }
  return failures;
}

void fail_one_rank(Communicator& g, uint64_t seed, int fail_rank) {
  const std::string dir = test::make_temp_dir("layer-tp-mpi-fail-r" + std::to_string(g.rank()));
  const test_tp::TpCase tc = test_tp::tp_cases()[0];
  test::TinyModelSpec ms = tc.model;
  ms.seed = seed;
  ms.shards = 3;
  test::write_tiny_model(dir, ms);
  if (g.rank() == fail_rank)
    std::filesystem::remove(std::filesystem::path(dir) / "model-00003-of-00003.safetensors");
  const ModelConfig cfg = read_model_config(dir + "/config.json");
  const TensorStore store = TensorStore::open_dir(dir);
  const MlaLayer shard(cfg, store, tc.layer, KvRotation::none, LayerWeights::stored, &g);
  test_tp::run_step(shard, tc, seed, 1);  // the healthy ranks wait in its all-reduce
  std::printf("rank %d: finished a step that should not have finished\n", g.rank());
}

}  // namespace
}  // namespace mla

int main(int argc, char** argv) {
  std::unique_ptr<mla::Communicator> g = mla::mpi_world_comm(&argc, &argv);
  int fail_rank = -1;
  if (argc == 3 && std::strcmp(argv[1], "--fail-rank") == 0) fail_rank = std::atoi(argv[2]);
  uint64_t seed = mla::test::test_seed();
  g->broadcast(&seed, sizeof seed, 0);
  if (g->rank() == 0)
    std::printf("layer_tp_mpi: %d ranks, seed %llu (MLA_TEST_SEED=%llu reproduces)\n", g->size(),
                (unsigned long long)seed, (unsigned long long)seed);
  try {
    if (fail_rank >= 0) {
      mla::fail_one_rank(*g, seed, fail_rank);
      return 3;
    }
    float failures = float(mla::compare_all(*g, seed));
    g->allreduce_sum(&failures, 1);
    if (g->rank() == 0) std::printf("layer_tp_mpi: %s\n", failures == 0 ? "PASS" : "FAIL");
    return failures == 0 ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "layer_tp_mpi: error (rank %d of %d): %s\n", g->rank(), g->size(),
                 e.what());
    g->abort(2);
  }
}
