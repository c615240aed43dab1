// safetensors files and model directories: what the tests write reads back exactly (bf16, fp16,
// fp32, fp8 with block scales, one file and shards with an index), and every malformed file or
// index is refused with the file and the tensor named.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "mla/safetensors.h"
#include "mla/tensor.h"  // both public headers in one file (they once both defined mla::TensorView)
#include "mla/status.h"
#include "harness/random_case.h"
#include "harness/tiny_model.h"

namespace mla {
namespace {

namespace fs = std::filesystem;

// The message of the mla::Error that f throws ("" and a test failure when it does not throw).
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no error";
  return "";
}

#define EXPECT_HAS(msg, part) EXPECT_NE((msg).find(part), std::string::npos) << (msg)

void write_raw(const std::string& path, const std::string& header, size_t data_bytes,
               uint64_t claimed_len = UINT64_MAX) {
  std::ofstream f(path, std::ios::binary);
  const uint64_t n = claimed_len == UINT64_MAX ? header.size() : claimed_len;
  for (int i = 0; i < 8; ++i) f.put(char((n >> (8 * i)) & 0xff));
  f << header << std::string(data_bytes, '\x11');
}

TEST(Safetensors, RoundTripEveryDtype) {
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const std::string dir = test::make_temp_dir("st");
  std::vector<std::vector<unsigned char>> payload;
  std::vector<StTensorData> ts;
  const std::vector<std::pair<StDType, std::vector<int64_t>>> kinds = {
      {StDType::bf16, {3, 5}}, {StDType::f16, {7}}, {StDType::f32, {2, 3, 4}},
      {StDType::f8_e4m3, {130, 257}}, {StDType::f32, {2, 3}}, {StDType::bf16, {0, 4}}};
  for (size_t k = 0; k < kinds.size(); ++k) {
    int64_t n = 1;
    for (int64_t d : kinds[k].second) n *= d;
    payload.emplace_back(n * st_dtype_size(kinds[k].first));
    for (auto& b : payload.back()) b = (unsigned char)(rng() & 0xff);
  }
  for (size_t k = 0; k < kinds.size(); ++k) {
    std::string name = "t";  // (not "t" + to_string: GCC 12 -Wrestrict false positive, bug 105329)
    name += std::to_string(k);
    ts.push_back({name, kinds[k].first, kinds[k].second, payload[k].data()});
  }
  const std::string path = dir + "/model.safetensors";
  write_safetensors(path, ts);
  for (const TensorStore& s : {TensorStore::open_file(path), TensorStore::open_dir(dir)}) {
    for (size_t k = 0; k < kinds.size(); ++k) {
      const StTensor v = s.get(ts[k].name);
      EXPECT_EQ(v.dtype, kinds[k].first);
      EXPECT_EQ(v.shape, kinds[k].second);
      ASSERT_EQ(size_t(v.numel()) * st_dtype_size(v.dtype), payload[k].size());
      if (!payload[k].empty()) {  // (memcmp with the empty tensor's null pointer is undefined)
        EXPECT_EQ(0, std::memcmp(v.data, payload[k].data(), payload[k].size())) << ts[k].name;
      }
    }
    EXPECT_FALSE(s.has("nope"));
  }
  fs::remove_all(dir);
}

// The fp8 codes of F8_E4M3 tensors are mla/dtype.h's (tests/test_dtype.cc checks every code).

TEST(Safetensors, ShardedModelFollowsTheIndex) {
  const std::string dir = test::make_temp_dir("st-shards");
  test::TinyModelSpec spec;
  spec.shards = 3;
  spec.dtype = StDType::f8_e4m3;
  test::write_tiny_model(dir, spec);
  const TensorStore s = TensorStore::open_dir(dir);
  const StTensor v = s.get("model.layers.1.self_attn.kv_b_proj.weight");
  EXPECT_EQ(v.dtype, StDType::f8_e4m3);
  EXPECT_NE(v.file.find("-of-00003.safetensors"), std::string::npos);
  const StTensor sc = s.get("model.layers.1.self_attn.kv_b_proj.weight_scale_inv");
  EXPECT_EQ(sc.shape, (std::vector<int64_t>{3, 4}));  // 4 x (32 + 48) = 320 rows x 512 in 128 x 128 blocks
  fs::remove_all(dir);
}

TEST(Safetensors, MalformedFilesAreRefusedWithFileAndTensorNamed) {
  const std::string dir = test::make_temp_dir("st-bad");
  const std::string p = dir + "/bad.safetensors";
  auto open_err = [&] { return error_of([&] { TensorStore::open_file(p); }); };

  { std::ofstream(p) << "abc"; }
  EXPECT_HAS(open_err(), "too short");
  write_raw(p, "{}", 0, 1000);
  EXPECT_HAS(open_err(), "header length 1000");
  write_raw(p, "{\"a\": [", 0);
  EXPECT_HAS(open_err(), "not valid JSON");
  write_raw(p, "[1, 2]", 0);
  EXPECT_HAS(open_err(), "not a JSON object");
  write_raw(p, R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", 8);
  std::string e = open_err();
  EXPECT_HAS(e, "tensor w");
  EXPECT_HAS(e, "beyond the data");
  EXPECT_HAS(e, p);
  write_raw(p, R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                   "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}})", 24);
  e = open_err();
  EXPECT_HAS(e, "overlap");
  EXPECT_HAS(e, "a [0, 16)");
  write_raw(p, R"({"w": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 16]}})", 16);
  EXPECT_HAS(open_err(), "needs 8");
  write_raw(p, R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [16, 0]}})", 16);
  EXPECT_HAS(open_err(), "begin is after end");
  write_raw(p, R"({"w": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}})", 16);
  EXPECT_HAS(open_err(), "negative");
  write_raw(p, R"({"w": {"dtype": "Q4", "shape": [4], "data_offsets": [0, 16]}})", 16);
  EXPECT_HAS(open_err(), "unknown dtype Q4");
  write_raw(p, R"({"w": {"shape": [4], "data_offsets": [0, 16]}})", 16);
  EXPECT_HAS(open_err(), "dtype");
  write_raw(p, R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0]}})", 16);
  EXPECT_HAS(open_err(), "data_offsets");

  // A good file cut short: the last tensor reaches beyond the end.
  const float vals[6] = {1, 2, 3, 4, 5, 6};
  write_safetensors(p, {{"x", StDType::f32, {2}, vals}, {"y", StDType::f32, {4}, vals + 2}});
  fs::resize_file(p, fs::file_size(p) - 4);
  e = open_err();
  EXPECT_HAS(e, "tensor y");
  EXPECT_HAS(e, "truncated");

  // Missing tensor, wrong dtype, wrong shape.
  write_safetensors(p, {{"x", StDType::f32, {2, 3}, vals}});
  const TensorStore s = TensorStore::open_file(p);
  e = error_of([&] { s.get("model.layers.0.self_attn.o_proj.weight"); });
  EXPECT_HAS(e, "model.layers.0.self_attn.o_proj.weight");
  EXPECT_HAS(e, p);
  e = error_of([&] { s.get("x", {2, 3}, {StDType::bf16}); });
  EXPECT_HAS(e, "tensor x has dtype F32, expected one of BF16");
  e = error_of([&] { s.get("x", {3, 2}, {StDType::f32}); });
  EXPECT_HAS(e, "tensor x has shape [2, 3], expected [3, 2]");
  fs::remove_all(dir);
}

TEST(Safetensors, BadIndexesAreRefused) {
  const std::string dir = test::make_temp_dir("st-index");
  EXPECT_HAS(error_of([&] { TensorStore::open_dir(dir); }), "neither");
  const std::string idx = dir + "/model.safetensors.index.json";
  { std::ofstream(idx) << "{\"weight_map\": "; }
  EXPECT_HAS(error_of([&] { TensorStore::open_dir(dir); }), "not valid JSON");
  { std::ofstream(idx) << "{\"metadata\": {}}"; }
  EXPECT_HAS(error_of([&] { TensorStore::open_dir(dir); }), "weight_map");
  { std::ofstream(idx) << R"({"weight_map": {"w": "../model.safetensors"}})"; }
  EXPECT_HAS(error_of([&] { TensorStore::open_dir(dir); }), "not a file name");
  { std::ofstream(idx) << R"({"weight_map": {"w": "model-00002-of-00002.safetensors"}})"; }
  const TensorStore s = TensorStore::open_dir(dir);
  std::string e = error_of([&] { s.get("w"); });
  EXPECT_HAS(e, "tensor w");
  EXPECT_HAS(e, "model-00002-of-00002.safetensors, which does not exist");
  e = error_of([&] { s.get("v"); });
  EXPECT_HAS(e, "no tensor v in weight_map");
  // The index names a shard that exists but lacks the tensor.
  const float one = 1.f;
  write_safetensors(dir + "/model-00002-of-00002.safetensors", {{"other", StDType::f32, {1}, &one}});
  e = error_of([&] { s.get("w"); });
  EXPECT_HAS(e, "no tensor w (the index says it is here)");
  fs::remove_all(dir);
}

}  // namespace
}  // namespace mla
