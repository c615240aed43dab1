// A decode step allocates nothing once the first step of its size has grown the buffers (issue 25):
// this binary replaces the global operator new with a counting one and runs a layer step with a
// plan made beforehand, on every weight format (and so on the tile kernel where the CPU has AMX).
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <new>
#include <random>
#include <vector>

#include "harness/random_case.h"
#include "harness/tiny_model.h"
#include "mla/decode_plan.h"
#include "mla/layer.h"

namespace {
std::atomic<bool> g_counting{false};
std::atomic<long> g_allocs{0};
}  // namespace

void* operator new(std::size_t n) {
  if (g_counting.load(std::memory_order_relaxed)) g_allocs.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) { return operator new(n); }
void* operator new(std::size_t n, std::align_val_t a) {
  if (g_counting.load(std::memory_order_relaxed)) g_allocs.fetch_add(1, std::memory_order_relaxed);
  const std::size_t al = std::size_t(a);
  if (void* p = std::aligned_alloc(al, (n + al - 1) / al * al)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n, std::align_val_t a) { return operator new(n, a); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }

namespace mla {
namespace {

TEST(LayerAlloc, StepAllocatesNothingAfterTheFirst) {
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const std::string dir = test::make_temp_dir("layer-alloc");
  test::TinyModelSpec ms;
  ms.seed = seed;
  test::write_tiny_model(dir, ms);
  const ModelConfig cfg = read_model_config(dir + "/config.json");
  const TensorStore store = TensorStore::open_dir(dir);
  const int B = 3, Q = 2, D = cfg.hidden_size;
  const std::vector<int32_t> lens = {40, 17, 66};
  std::vector<int32_t> bt(B * 5);
  for (int i = 0; i < B * 5; ++i) bt[i] = i;
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> hidden(size_t(B) * Q * D), out(hidden.size());
  for (auto& x : hidden) x = nd(rng);
  for (LayerWeights wf : {LayerWeights::stored, LayerWeights::int8}) {
    const MlaLayer layer(cfg, store, 0, KvRotation::none, wf);
    PagedLatentCache cache(CacheConfig{.num_blocks = B * 5, .block_size = 16});
    DecodeOptions opt;
    opt.threads = 2;
    const DecodePlan plan = make_decode_plan(
        {.batch = B, .q_len = Q, .num_heads = cfg.num_heads, .seq_lens = lens.data(), .workers = 2});
    const LayerStep step{.batch = B, .q_len = Q, .hidden = hidden.data(), .seq_lens = lens.data(),
                         .block_table = bt.data(), .max_blocks_per_seq = 5};
    layer.decode(step, cache, opt, plan, out.data());  // grows the buffers
    g_allocs = 0;
    g_counting = true;
    for (int s = 0; s < 3; ++s) layer.decode(step, cache, opt, plan, out.data());
    g_counting = false;
    EXPECT_EQ(g_allocs.load(), 0) << layer_weights_name(wf) << ": allocations in 3 steps";
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace mla
