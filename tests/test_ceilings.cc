// The roofline ceilings: the JSON file round trip and its error messages, and short measurements
// that must give positive, finite, plausibly ordered rates with every instruction set the CPU has.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "roofline/ceilings.h"
#include "mla/status.h"

namespace mla {
namespace {

namespace fs = std::filesystem;

fs::path tmp_dir() {
  const char* env = std::getenv("MLA_TEST_TMP");
  fs::path d = env != nullptr && env[0] != '\0' ? fs::path(env) : fs::temp_directory_path();
  d /= "test_ceilings_" + std::to_string(getpid());
  fs::create_directories(d);
  return d;
}

std::string write_file(const std::string& name, const std::string& text) {
  const fs::path p = tmp_dir() / name;
  std::ofstream(p) << text;
  return p.string();
}

Ceilings sample(int threads) {
  return Ceilings{.cpu = "Test CPU 9000",
                  .threads = threads,
                  .read_bw_mem_gbs = 21.5 * threads,
                  .read_bw_l2_gbs = 150.25 * threads,
                  .read_bw_l3_gbs = 80.125 * threads,
                  .fp32_fma_gflops = 160.0 * threads,
                  .bf16_dot_gflops = 320.0 * threads,
                  .int8_dot_gops = 640.0 * threads,
                  .fp32_isa = "avx512f",
                  .bf16_isa = "avx512_bf16",
                  .int8_isa = "avx512_vnni",
                  .read_isa = "avx512f"};
}

void expect_equal(const Ceilings& a, const Ceilings& b) {
  EXPECT_EQ(a.cpu, b.cpu);
  EXPECT_EQ(a.threads, b.threads);
  EXPECT_EQ(a.limit, b.limit);
  EXPECT_EQ(a.read_bw_mem_gbs, b.read_bw_mem_gbs);
  EXPECT_EQ(a.read_bw_l2_gbs, b.read_bw_l2_gbs);
  EXPECT_EQ(a.read_bw_l3_gbs, b.read_bw_l3_gbs);
  EXPECT_EQ(a.fp32_fma_gflops, b.fp32_fma_gflops);
  EXPECT_EQ(a.bf16_dot_gflops, b.bf16_dot_gflops);
  EXPECT_EQ(a.int8_dot_gops, b.int8_dot_gops);
  EXPECT_EQ(a.fp32_isa, b.fp32_isa);
  EXPECT_EQ(a.bf16_isa, b.bf16_isa);
  EXPECT_EQ(a.int8_isa, b.int8_isa);
  EXPECT_EQ(a.read_isa, b.read_isa);
}

TEST(CeilingsJson, RoundTrip) {
  const std::vector<Ceilings> all = {sample(1), sample(2)};
  const std::string text = ceilings_to_json(all);
  const std::vector<Ceilings> back = ceilings_from_json_file(write_file("round.json", text));
  ASSERT_EQ(back.size(), 2u);
  expect_equal(back[0], all[0]);
  expect_equal(back[1], all[1]);
  EXPECT_EQ(ceilings_to_json(back), text);
}

TEST(CeilingsJson, LayoutIsTheDocumentedOne) {
  const nlohmann::json j = nlohmann::json::parse(ceilings_to_json({sample(1)}));
  EXPECT_EQ(j["cpu"], "Test CPU 9000");
  ASSERT_TRUE(j["ceilings"].is_array());
  const nlohmann::json& e = j["ceilings"][0];
  EXPECT_EQ(e["threads"], 1);
  EXPECT_EQ(e["read_bw_l2_gbs"], 150.25);
  EXPECT_EQ(e["int8_isa"], "avx512_vnni");
}

TEST(CeilingsJson, ReadIsaIsOptional) {
  const std::string path = write_file("no_read_isa.json", R"({"cpu": "c", "ceilings": [{
      "threads": 4, "read_bw_mem_gbs": 1, "read_bw_l2_gbs": 2, "read_bw_l3_gbs": 3,
      "fp32_fma_gflops": 4, "bf16_dot_gflops": 5, "int8_dot_gops": 6,
      "fp32_isa": "avx2_fma", "bf16_isa": "avx2_fma_widen", "int8_isa": "avx2"}]})");
  const std::vector<Ceilings> all = ceilings_from_json_file(path);
  ASSERT_EQ(all.size(), 1u);
  EXPECT_EQ(all[0].cpu, "c");
  EXPECT_EQ(all[0].threads, 4);
  EXPECT_EQ(all[0].int8_dot_gops, 6);
  EXPECT_EQ(all[0].read_isa, "");
}

// Every refusal names the file and what is wrong with it.
void expect_error(const std::string& path, const std::string& fragment) {
  try {
    ceilings_from_json_file(path);
    ADD_FAILURE() << "no error for " << path << " (expected one mentioning " << fragment << ")";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find(path), std::string::npos) << what;
    EXPECT_NE(what.find(fragment), std::string::npos) << what;
  }
}

TEST(CeilingsJson, MissingFileIsNamed) {
  const std::string path = (tmp_dir() / "does_not_exist.json").string();
  expect_error(path, "cannot open");
}

TEST(CeilingsJson, MalformedFilesAreNamed) {
  std::string entry = ceilings_to_json({sample(1)});
  auto with = [&](const std::string& from, const std::string& to) {
    std::string s = entry;
    const size_t at = s.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    return s.replace(at, from.size(), to);
  };
  expect_error(write_file("bad1.json", "{\"cpu\": "), "not valid JSON");
  expect_error(write_file("bad2.json", "[1, 2]"), "not an object");
  expect_error(write_file("bad3.json", R"({"cpu": "x"})"), "\"ceilings\"");
  expect_error(write_file("bad4.json", with("\"threads\": 1", "\"threads\": 0")), "threads = 0");
  expect_error(write_file("bad5.json", with("\"int8_dot_gops\": 640.0,", "")), "int8_dot_gops");
  expect_error(
      write_file("bad6.json", with("\"read_bw_l2_gbs\": 150.25", "\"read_bw_l2_gbs\": -1")),
      "read_bw_l2_gbs = -1");
  expect_error(write_file("bad7.json", with("\"fp32_isa\": \"avx512f\"", "\"fp32_isa\": 3")),
               "fp32_isa");
  const std::string twice = ceilings_to_json({sample(2), sample(2)});
  expect_error(write_file("bad8.json", twice), "repeats threads = 2");
}

TEST(Ceilings, FindByThreads) {
  const std::vector<Ceilings> all = {sample(1), sample(2)};
  ASSERT_NE(find(all, 2), nullptr);
  EXPECT_EQ(find(all, 2)->threads, 2);
  EXPECT_EQ(find(all, 3), nullptr);
}

// A file with both the native and the AVX2-limited ceilings (roofline on an AVX-512 CPU): each
// is found by its limit; the limit is optional (native) and checked.
TEST(Ceilings, Avx2LimitedEntries) {
  Ceilings a2 = sample(2);
  a2.limit = "avx2";
  a2.fp32_fma_gflops = 100;
  a2.fp32_isa = "avx2_fma";
  const std::vector<Ceilings> all = {sample(1), sample(2), a2};
  const std::vector<Ceilings> back =
      ceilings_from_json_file(write_file("limits.json", ceilings_to_json(all)));
  ASSERT_EQ(back.size(), 3u);
  expect_equal(back[2], a2);
  ASSERT_NE(find(back, 2, "avx2"), nullptr);
  EXPECT_EQ(find(back, 2, "avx2")->fp32_fma_gflops, 100);
  EXPECT_EQ(find(back, 2)->limit, "native");
  EXPECT_EQ(find(back, 1, "avx2"), nullptr);  // native is AVX-512 there: no AVX2 figure
  // On a CPU without AVX-512 the native entry is the AVX2 one.
  Ceilings n2 = sample(3);
  n2.fp32_isa = "avx2_fma";
  const std::vector<Ceilings> only = {n2};
  EXPECT_EQ(find(only, 3, "avx2"), &only[0]);
  // Two entries of one thread count and limit, or an unknown limit, are refused.
  expect_error(write_file("limits2.json", ceilings_to_json({a2, a2})), "repeats threads = 2");
  std::string text = ceilings_to_json({a2});
  text.replace(text.find("\"avx2\","), 7, "\"avx9\"");
  expect_error(write_file("limits3.json", text), "limit");
}

TEST(Ceilings, DefaultPath) {
  setenv("MLA_CEILINGS", "/some/where/c.json", 1);
  EXPECT_EQ(default_ceilings_path(), "/some/where/c.json");
  unsetenv("MLA_CEILINGS");
  EXPECT_EQ(default_ceilings_path(), "ceilings.json");
}

TEST(Ceilings, RefusesBadArguments) {
  EXPECT_THROW(measure_ceilings(0, 0.01), Error);
  EXPECT_THROW(measure_ceilings(1, 0.0), Error);
  EXPECT_THROW(measure_ceilings(1, std::nan("")), Error);
}

void expect_plausible(const Ceilings& c) {
  SCOPED_TRACE("threads " + std::to_string(c.threads) + ", isa " + c.fp32_isa + "/" + c.bf16_isa +
               "/" + c.int8_isa + "/" + c.read_isa);
  EXPECT_FALSE(c.cpu.empty());
  for (double v : {c.read_bw_mem_gbs, c.read_bw_l2_gbs, c.read_bw_l3_gbs, c.fp32_fma_gflops,
                   c.bf16_dot_gflops, c.int8_dot_gops}) {
    EXPECT_TRUE(std::isfinite(v));
    EXPECT_GT(v, 0);
  }
  EXPECT_GT(c.read_bw_l2_gbs, c.read_bw_mem_gbs);
  // One vpdpbusd does 4x the multiply-adds of one vfmadd231ps of the same width.
  if (c.int8_isa.find("vnni") != std::string::npos) {
    EXPECT_GT(c.int8_dot_gops, c.fp32_fma_gflops);
  }
  EXPECT_FALSE(c.fp32_isa.empty());
  EXPECT_FALSE(c.bf16_isa.empty());
  EXPECT_FALSE(c.int8_isa.empty());
  EXPECT_FALSE(c.read_isa.empty());
}

TEST(CeilingsMeasure, ShortRunIsPlausible) {
  const Ceilings c = measure_ceilings(1, 0.02);
  EXPECT_EQ(c.threads, 1);
  expect_plausible(c);
  if (__builtin_cpu_supports("avx512vnni")) {
    EXPECT_EQ(c.int8_isa, "avx512_vnni");
  }
  if (__builtin_cpu_supports("avx512bf16")) {
    EXPECT_EQ(c.bf16_isa, "avx512_bf16");
  }
}

TEST(CeilingsMeasure, TwoThreadsRunTogether) {
  const Ceilings c = measure_ceilings(2, 0.02);
  EXPECT_EQ(c.threads, 2);
  expect_plausible(c);
}

TEST(CeilingsMeasure, Fallbacks) {
  using ceilings_detail::IsaLimit;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    const Ceilings c = ceilings_detail::measure_ceilings_limited(1, 0.02, IsaLimit::avx2);
    expect_plausible(c);
    EXPECT_EQ(c.fp32_isa, "avx2_fma");
    EXPECT_EQ(c.bf16_isa, "avx2_fma_widen");
    EXPECT_EQ(c.bf16_dot_gflops, c.fp32_fma_gflops);
    EXPECT_EQ(c.read_isa, "avx2");
  }
  const Ceilings c = ceilings_detail::measure_ceilings_limited(1, 0.02, IsaLimit::sse2);
  expect_plausible(c);
  EXPECT_EQ(c.fp32_isa, "sse2");
  EXPECT_EQ(c.bf16_isa, "sse2_widen");
  EXPECT_EQ(c.int8_isa, "sse2");
  EXPECT_EQ(c.read_isa, "sse2");
}

}  // namespace
}  // namespace mla
