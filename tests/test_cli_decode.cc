// `mla decode` end to end: runs the real binary (MLA_CLI) on .npy cases written here and checks its
// files against a float64 attention computed in this file from the q_used.npy / kv_used.npy it
// wrote (never through mla::ref, so a bug shared by the library and its reference still shows).
// Also: the working-type rounding in q_used / kv_used, given int8 scale files, every refusal
// (exit 2, a message naming the file or value, no output file), and `--random` / `--help`.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <limits>
#include <map>
#include <numeric>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "mla/npy.h"
#include "mla/plan.h"
#include "harness/random_case.h"

namespace mla {
namespace {

namespace fs = std::filesystem;

constexpr int kDk = 576, kDv = 512;
constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// ---- running the binary --------------------------------------------------------------------

std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// A fresh directory for the running test, $MLA_TEST_TMP/<suite>.<test>.<pid>.<n>; removed when the
// test passes (the inputs of a sweep take a few hundred MB), kept for a look when it fails.
struct TestDir {
  fs::path path;
  TestDir() {
    static std::atomic<int> n{0};
    const char* root = std::getenv("MLA_TEST_TMP");
    const fs::path base =
        root && *root ? fs::path(root) : fs::temp_directory_path() / "mla_test_tmp";
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name = std::string(info->test_suite_name()) + "." + info->name() + "." +
                       std::to_string(::getpid()) + "." + std::to_string(n++);
    std::replace(name.begin(), name.end(), '/', '_');
    path = base / name;
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TestDir() {
    std::error_code ec;
    if (!::testing::Test::HasFailure()) fs::remove_all(path, ec);
  }
  TestDir(const TestDir&) = delete;
  TestDir& operator=(const TestDir&) = delete;
};

struct RunResult {
  int code = -1;
  std::string out, err, cmd;
  std::string describe() const {
    return "command: " + cmd + "\nexit " + std::to_string(code) + "\nstdout:\n" + out +
           "\nstderr:\n" + err;
  }
};

// Runs `mla <args>`; stdout and stderr are captured in files under `work`.
RunResult run_cli(const std::vector<std::string>& args, const fs::path& work) {
  const char* cli = std::getenv("MLA_CLI");
  RunResult r;
  if (!cli || !*cli) {
    ADD_FAILURE() << "MLA_CLI is not set (ctest sets it to the mla executable)";
    return r;
  }
  r.cmd = shell_quote(cli);
  for (const auto& a : args) r.cmd += " " + shell_quote(a);
  const fs::path out = work / "stdout.txt", err = work / "stderr.txt";
  const int st = std::system((r.cmd + " >" + shell_quote(out) + " 2>" + shell_quote(err)).c_str());
  r.code = st == -1 ? -1 : WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  r.out = slurp(out);
  r.err = slurp(err);
  return r;
}

// ---- independent conversions (not the library's) ----------------------------------------------

float to_bf16(float x) {  // round to nearest even; the inputs here are finite
  uint32_t u;
  std::memcpy(&u, &x, 4);
  u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
  float y;
  std::memcpy(&y, &u, 4);
  return y;
}
float to_f16(float x) { return float(static_cast<_Float16>(x)); }

// ---- a case on files ----------------------------------------------------------------------

struct Format {
  std::string kv = "bf16";      // bf16 | fp16 | int8 | fp8
  std::string scale = "token";  // int8: token | tensor | channel | group32 | group64 | group128
  std::string name() const { return kv == "int8" ? kv + "/" + scale : kv; }
  std::vector<std::string> args() const {
    std::vector<std::string> a{"--kv-dtype", kv};
    if (kv == "int8") a.insert(a.end(), {"--kv-scale", scale});
    return a;
  }
};
const Format kFormats[] = {{"bf16", "token"},
                           {"fp16", "token"},
                           {"int8", "token"},
                           {"int8", "tensor"},
                           {"int8", "channel"}};

struct Spec {
  int batch = 1, q_len = 1, heads = 1, block_size = 16;
  std::vector<int32_t> seq_lens;
  std::vector<int32_t> q_lens;  // empty: no q_lens.npy (every sequence has q_len rows)
  bool causal = true;
  Format fmt;
  std::optional<float> scale;  // --scale
  std::string q_dtype;         // --q-dtype, empty: the default
  std::string describe() const {
    std::ostringstream os;
    os << "batch " << batch << " q_len " << q_len << " heads " << heads << " block " << block_size
       << " kv " << fmt.name() << (causal ? " causal" : " non-causal") << " seq_lens";
    for (int s : seq_lens) os << " " << s;
    os << " q_lens";
    if (q_lens.empty()) os << " (none)";
    for (int s : q_lens) os << " " << s;
    if (scale) os << " scale " << *scale;
    if (!q_dtype.empty()) os << " q-dtype " << q_dtype;
    return os.str();
  }
};

struct FileCase {
  Spec s;
  int64_t num_blocks = 0;
  int max_blocks = 0;
  std::vector<int32_t> block_table;  // [B, max_blocks], scattered ids, -1 past the used blocks
  std::vector<float> q;              // [B, q_len, H, 576]
  std::vector<float> kv;             // [num_blocks, block_size, 576], NaN in every unused slot
  std::vector<char> used;            // [num_slots]

  int ql(int b) const { return s.q_lens.empty() ? s.q_len : s.q_lens[b]; }
  int64_t slot(int b, int t) const {
    return int64_t(block_table[size_t(b) * max_blocks + t / s.block_size]) * s.block_size +
           t % s.block_size;
  }
  int64_t rows() const { return int64_t(s.batch) * s.q_len * s.heads; }
  // The scale is fp32 (DESIGN §2); the default 1/sqrt(192) rounded to it.
  double softmax_scale() const {
    return s.scale ? double(*s.scale) : double(1.f / std::sqrt(192.f));
  }
  int last_visible(int b, int i) const {  // -1: padding row
    const int sl = s.seq_lens[b];
    if (sl == 0 || i >= ql(b)) return -1;
    return s.causal ? sl - ql(b) + i : sl - 1;
  }
};

FileCase make_case(const Spec& s, uint64_t seed) {
  FileCase c;
  c.s = s;
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  int needed = 0, longest = 0;
  for (int l : s.seq_lens) {
    needed += (l + s.block_size - 1) / s.block_size;
    longest = std::max(longest, (l + s.block_size - 1) / s.block_size);
  }
  c.num_blocks = needed + 2;   // two blocks nobody uses
  c.max_blocks = longest + 1;  // one column of -1 past every sequence
  std::vector<int32_t> ids(c.num_blocks);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  c.block_table.assign(size_t(s.batch) * c.max_blocks, -1);
  size_t next = 0;
  for (int b = 0; b < s.batch; ++b)
    for (int j = 0; j < (s.seq_lens[b] + s.block_size - 1) / s.block_size; ++j)
      c.block_table[size_t(b) * c.max_blocks + j] = ids[next++];
  const int64_t slots = c.num_blocks * s.block_size;
  c.kv.assign(size_t(slots) * kDk, std::nanf(""));
  c.used.assign(slots, 0);
  // Channels of different magnitudes, so per-channel int8 scales differ from the per-tensor one.
  for (int b = 0; b < s.batch; ++b)
    for (int t = 0; t < s.seq_lens[b]; ++t) {
      const int64_t sl = c.slot(b, t);
      c.used[sl] = 1;
      for (int d = 0; d < kDk; ++d) c.kv[sl * kDk + d] = nd(rng) * (0.4f + 0.2f * float(d % 7));
    }
  // Scores with a spread of about 2: neither flat nor one-hot.
  const float sigma_q = 2.f * std::sqrt(192.f) / std::sqrt(float(kDk));
  c.q.resize(size_t(c.rows()) * kDk);
  for (auto& v : c.q) v = nd(rng) * sigma_q;
  return c;
}

void write_case(const FileCase& c, const fs::path& dir) {
  fs::create_directories(dir);
  const Spec& s = c.s;
  write_npy((dir / "q.npy").string(), DType::f32, {s.batch, s.q_len, s.heads, kDk}, c.q.data());
  write_npy((dir / "kv.npy").string(), DType::f32, {c.num_blocks, s.block_size, kDk}, c.kv.data());
  write_npy((dir / "block_table.npy").string(), DType::i32, {s.batch, c.max_blocks},
            c.block_table.data());
  write_npy((dir / "seq_lens.npy").string(), DType::i32, {s.batch}, s.seq_lens.data());
  if (!s.q_lens.empty())
    write_npy((dir / "q_lens.npy").string(), DType::i32, {s.batch}, s.q_lens.data());
}

// args with each option of `extra` set: an earlier occurrence (and its value) is replaced, since
// the command refuses an option given twice.
std::vector<std::string> set_options(std::vector<std::string> args,
                                     const std::vector<std::string>& extra) {
  for (size_t i = 0; i < extra.size(); ++i) {
    const bool has_value = i + 1 < extra.size() && extra[i + 1].rfind("--", 0) != 0;
    for (size_t j = 0; j < args.size(); ++j)
      if (args[j] == extra[i]) {
        args.erase(args.begin() + j, args.begin() + j + (has_value ? 2 : 1));
        break;
      }
    args.push_back(extra[i]);
    if (has_value) args.push_back(extra[++i]);
  }
  return args;
}

std::vector<std::string> decode_args(const FileCase& c, const fs::path& in, const fs::path& out,
                                     const std::string& impl) {
  std::vector<std::string> a{"decode", "--in", in.string(), "--out", out.string()};
  if (!impl.empty()) a.insert(a.end(), {"--impl", impl});
  const auto f = c.s.fmt.args();
  a.insert(a.end(), f.begin(), f.end());
  if (!c.s.causal) a.push_back("--no-causal");
  if (c.s.scale) a.insert(a.end(), {"--scale", std::to_string(*c.s.scale)});
  if (!c.s.q_dtype.empty()) a.insert(a.end(), {"--q-dtype", c.s.q_dtype});
  return a;
}

// ---- outputs ---------------------------------------------------------------------------------

struct Outputs {
  NpyArray o, lse, q_used, kv_used;
};

// Reads the four outputs, checking dtype and shape (a wrong one fails the test).
std::optional<Outputs> read_outputs(const FileCase& c, const fs::path& out) {
  const Spec& s = c.s;
  Outputs r;
  try {
    r.o = read_npy((out / "o.npy").string(), DType::f32, {s.batch, s.q_len, s.heads, kDv});
    r.lse = read_npy((out / "lse.npy").string(), DType::f32, {s.batch, s.q_len, s.heads});
    r.q_used =
        read_npy((out / "q_used.npy").string(), DType::f32, {s.batch, s.q_len, s.heads, kDk});
    r.kv_used =
        read_npy((out / "kv_used.npy").string(), DType::f32, {c.num_blocks, s.block_size, kDk});
  } catch (const std::exception& e) {
    ADD_FAILURE() << "reading the outputs: " << e.what();
    return std::nullopt;
  }
  return r;
}

// ---- the float64 attention, from q_used and kv_used -----------------------------------------

struct Expected {
  std::vector<double> o, lse;  // [rows, 512], [rows]; padding rows 0 / -inf
};

Expected attention_f64(const FileCase& c, const float* q_used, const float* kv_used) {
  const Spec& s = c.s;
  Expected e;
  e.o.assign(size_t(c.rows()) * kDv, 0.0);
  e.lse.assign(c.rows(), kNegInf);
  std::vector<double> score;
  for (int b = 0; b < s.batch; ++b)
    for (int i = 0; i < s.q_len; ++i) {
      const int last = c.last_visible(b, i);
      if (last < 0) continue;
      for (int h = 0; h < s.heads; ++h) {
        const int64_t r = (int64_t(b) * s.q_len + i) * s.heads + h;
        const float* q = q_used + r * kDk;
        score.assign(last + 1, 0.0);
        double m = kNegInf;
        for (int t = 0; t <= last; ++t) {
          const float* k = kv_used + c.slot(b, t) * kDk;
          double d = 0;
          for (int x = 0; x < kDk; ++x) d += double(q[x]) * double(k[x]);
          score[t] = d * c.softmax_scale();
          m = std::max(m, score[t]);
        }
        double l = 0;
        double* o = e.o.data() + r * kDv;
        for (int t = 0; t <= last; ++t) {
          const double p = std::exp(score[t] - m);
          l += p;
          const float* v = kv_used + c.slot(b, t) * kDk;
          for (int x = 0; x < kDv; ++x) o[x] += p * double(v[x]);
        }
        for (int x = 0; x < kDv; ++x) o[x] /= l;
        e.lse[r] = m + std::log(l);
      }
    }
  return e;
}

struct Tol {
  double rel;     // ||o - ref|| / ||ref|| over the non-padding rows of each sequence
  double cosine;  // per sequence
  double lse_abs;
  double elem_rel;  // per element: |o - ref| <= elem_rel * |ref| + elem_abs (0: not checked)
  double elem_abs;
};
constexpr Tol kRefTol{
    .rel = 1e-5, .cosine = 1 - 1e-9, .lse_abs = 1e-5, .elem_rel = 1e-5, .elem_abs = 1e-6};
constexpr Tol kFp16Tol{
    .rel = 5e-3, .cosine = 0.9999, .lse_abs = 1e-3, .elem_rel = 0, .elem_abs = 0};
constexpr Tol kInt8Tol{.rel = 2e-2, .cosine = 0.999, .lse_abs = 1e-2, .elem_rel = 0, .elem_abs = 0};

// Padding rows exactly 0 / -inf; other rows finite and within `tol` of the float64 attention.
void check_against(const FileCase& c, const Outputs& out, const Expected& e, const Tol& tol) {
  const Spec& s = c.s;
  const float* o = out.o.as<float>();
  const float* lse = out.lse.as<float>();
  int reported = 0;
  auto report = [&](const std::string& msg) {
    if (reported++ < 8) ADD_FAILURE() << msg;
  };
  for (int b = 0; b < s.batch; ++b) {
    double d2 = 0, r2 = 0, o2 = 0, dot = 0, lse_err = 0;
    bool any = false;
    for (int i = 0; i < s.q_len; ++i)
      for (int h = 0; h < s.heads; ++h) {
        const int64_t r = (int64_t(b) * s.q_len + i) * s.heads + h;
        const std::string where =
            "b " + std::to_string(b) + " row " + std::to_string(i) + " head " + std::to_string(h);
        if (c.last_visible(b, i) < 0) {
          for (int x = 0; x < kDv; ++x)
            if (o[r * kDv + x] != 0.f || std::signbit(o[r * kDv + x])) {
              report("padding " + where + ": o[" + std::to_string(x) +
                     "] = " + std::to_string(o[r * kDv + x]) + ", expected exactly 0");
              break;
            }
          if (!(std::isinf(lse[r]) && lse[r] < 0))
            report("padding " + where + ": lse = " + std::to_string(lse[r]) + ", expected -inf");
          continue;
        }
        any = true;
        if (!std::isfinite(lse[r])) report(where + ": lse = " + std::to_string(lse[r]));
        lse_err = std::max(lse_err, std::fabs(double(lse[r]) - e.lse[r]));
        for (int x = 0; x < kDv; ++x) {
          const double a = o[r * kDv + x], ref = e.o[r * kDv + x];
          if (!std::isfinite(a)) {
            report(where + ": o[" + std::to_string(x) + "] = " + std::to_string(a));
            continue;
          }
          d2 += (a - ref) * (a - ref);
          r2 += ref * ref;
          o2 += a * a;
          dot += a * ref;
          if (tol.elem_rel > 0 &&
              !(std::fabs(a - ref) <= tol.elem_rel * std::fabs(ref) + tol.elem_abs))
            report(where + ": o[" + std::to_string(x) + "] = " + std::to_string(a) + ", float64 " +
                   std::to_string(ref));
        }
      }
    if (!any) continue;
    const double rel = std::sqrt(d2 / r2), cosine = dot / std::sqrt(r2 * o2);
    EXPECT_LE(rel, tol.rel) << "sequence " << b << ": relative-norm error";
    EXPECT_GE(cosine, tol.cosine) << "sequence " << b << ": cosine similarity";
    EXPECT_LE(lse_err, tol.lse_abs) << "sequence " << b << ": largest lse error";
  }
  EXPECT_LE(reported, 0) << "element mismatches (the first 8 are listed above)";
}

// ---- working-type checks on q_used / kv_used -------------------------------------------------

// q_used == q rounded to `t` (bf16, fp16 or fp32), every element.
void check_q_rounded(const FileCase& c, const Outputs& out, const std::string& t) {
  const float* qu = out.q_used.as<float>();
  int64_t bad = 0;
  for (size_t i = 0; i < c.q.size(); ++i) {
    const float want = t == "bf16" ? to_bf16(c.q[i]) : t == "fp16" ? to_f16(c.q[i]) : c.q[i];
    if (qu[i] != want && bad++ < 5)
      ADD_FAILURE() << "q_used[" << i << "] = " << qu[i] << ", expected q = " << c.q[i]
                    << " rounded to " << t << " = " << want;
  }
  EXPECT_EQ(bad, 0) << "q_used elements that are not q rounded to " << t;
}

// The int8 step of (slot, channel): per token max|latent|/127, per tensor max over the used slots
// /127, per channel max over the used slots of that channel /127; or the given scales.
struct Int8Steps {
  std::string mode;
  std::vector<float> token;  // [num_slots]
  float tensor = 0;
  std::vector<float> channel;  // [512]
  float at(int64_t slot, int ch) const {
    return mode == "token" ? token[slot] : mode == "tensor" ? tensor : channel[ch];
  }
};

Int8Steps int8_steps(const FileCase& c, const std::string& mode, std::optional<float> given_tensor,
                     const std::vector<float>& given_channel) {
  Int8Steps st;
  st.mode = mode;
  const int64_t slots = int64_t(c.used.size());
  st.token.assign(slots, 0.f);
  std::vector<float> chmax(kDv, 0.f);
  for (int64_t sl = 0; sl < slots; ++sl) {
    if (!c.used[sl]) continue;
    float m = 0;
    for (int x = 0; x < kDv; ++x) {
      const float v = std::fabs(c.kv[sl * kDk + x]);
      m = std::max(m, v);
      chmax[x] = std::max(chmax[x], v);
    }
    st.token[sl] = m / 127.f;
  }
  st.tensor = given_tensor ? *given_tensor : *std::max_element(chmax.begin(), chmax.end()) / 127.f;
  st.channel = given_channel;
  if (st.channel.empty())
    for (float m : chmax) st.channel.push_back(m / 127.f);
  return st;
}

// kv_used in every used slot: bf16/fp16 the input rounded; int8 the latent an integer multiple
// k * step with |k| <= 127, within half a step of the input (or saturated at +-127 steps), the
// rope part rounded to bf16. Unused slots hold garbage and are not looked at. Returns how many
// latent values lay beyond 127 steps (saturated).
int64_t check_kv_used(const FileCase& c, const Outputs& out, const Int8Steps* steps) {
  const float* ku = out.kv_used.as<float>();
  const std::string& kv = c.s.fmt.kv;
  int64_t bad = 0, saturated = 0;
  auto fail = [&](int64_t sl, int x, const std::string& why) {
    if (bad++ < 5)
      ADD_FAILURE() << "kv_used slot " << sl << " dim " << x << " = " << ku[sl * kDk + x]
                    << " for input " << c.kv[sl * kDk + x] << ": " << why;
  };
  for (int64_t sl = 0; sl < int64_t(c.used.size()); ++sl) {
    if (!c.used[sl]) continue;
    for (int x = 0; x < kDk; ++x) {
      const float in = c.kv[sl * kDk + x], got = ku[sl * kDk + x];
      if (kv == "fp16") {
        if (got != to_f16(in)) fail(sl, x, "expected fp16 rounding " + std::to_string(to_f16(in)));
      } else if (kv == "bf16" || x >= kDv) {
        if (got != to_bf16(in))
          fail(sl, x, "expected bf16 rounding " + std::to_string(to_bf16(in)));
      } else {
        const double step = steps->at(sl, x);
        const double k = double(got) / step;
        if (!(std::fabs(k - std::nearbyint(k)) <= 1e-3 && std::fabs(k) <= 127 + 1e-3))
          fail(sl, x,
               "not an integer multiple (" + std::to_string(k) + ") of step " +
                   std::to_string(step) + " within +-127");
        if (std::fabs(in) > 127.5 * step) {
          ++saturated;
          if (std::fabs(double(got) - std::copysign(127.0 * step, in)) > 1e-6 * 127 * step)
            fail(sl, x, "expected saturation at " + std::to_string(127 * step));
        } else if (!(std::fabs(double(got) - in) <= 0.5 * step * (1 + 1e-4))) {
          fail(sl, x, "more than half a step (" + std::to_string(step) + ") from the input");
        }
      }
    }
  }
  EXPECT_EQ(bad, 0) << "kv_used elements that are not the input in the cache format "
                    << c.s.fmt.name();
  return saturated;
}

// Runs one case through `mla decode` and checks everything it wrote. Returns the outputs read.
std::optional<Outputs> run_and_check(const FileCase& c, const fs::path& in, const fs::path& out,
                                     const std::string& impl, const std::vector<std::string>& extra,
                                     const Tol& tol) {
  const RunResult r = run_cli(set_options(decode_args(c, in, out, impl), extra), out.parent_path());
  EXPECT_EQ(r.code, 0) << r.describe();
  if (r.code != 0) return std::nullopt;
  std::optional<Outputs> o = read_outputs(c, out);
  if (!o) return o;
  const Expected e = attention_f64(c, o->q_used.as<float>(), o->kv_used.as<float>());
  check_against(c, *o, e, tol);
  return o;
}

std::string trace(uint64_t seed) {
  return "seed " + std::to_string(seed) + " (set MLA_TEST_SEED to repeat)";
}

// ---- 1. --impl ref against the float64 attention ---------------------------------------------

std::vector<Spec> ref_sweep(uint64_t seed) {
  const Format bf16{"bf16", "token"}, fp16{"fp16", "token"}, i8t{"int8", "token"},
      i8s{"int8", "tensor"}, i8c{"int8", "channel"};
  std::vector<Spec> v = {
      {.batch = 1, .q_len = 1, .heads = 1, .block_size = 1, .seq_lens = {1}, .fmt = bf16},
      {.batch = 3,
       .q_len = 2,
       .heads = 3,
       .block_size = 16,
       .seq_lens = {37, 0, 16},
       .q_lens = {2, 1, 1},
       .fmt = fp16},
      {.batch = 4,
       .q_len = 4,
       .heads = 16,
       .block_size = 64,
       .seq_lens = {130, 4, 0, 65},
       .q_lens = {4, 3, 2, 1},
       .fmt = i8t},
      {.batch = 2,
       .q_len = 3,
       .heads = 128,
       .block_size = 128,
       .seq_lens = {150, 3},
       .causal = false,
       .fmt = i8s},
      {.batch = 2,
       .q_len = 2,
       .heads = 16,
       .block_size = 16,
       .seq_lens = {50, 33},
       .q_lens = {1, 2},
       .fmt = i8c},
      {.batch = 2,
       .q_len = 4,
       .heads = 3,
       .block_size = 1,
       .seq_lens = {9, 4},
       .q_lens = {4, 4},
       .causal = false,
       .fmt = bf16},
      {.batch = 3, .q_len = 1, .heads = 16, .block_size = 64, .seq_lens = {64, 63, 1}, .fmt = fp16},
      {.batch = 2,
       .q_len = 4,
       .heads = 128,
       .block_size = 16,
       .seq_lens = {6, 0},
       .q_lens = {4, 0},
       .fmt = bf16},
      {.batch = 1,
       .q_len = 2,
       .heads = 3,
       .block_size = 128,
       .seq_lens = {129},
       .fmt = i8t,
       .scale = 0.07f},
      {.batch = 2,
       .q_len = 2,
       .heads = 3,
       .block_size = 16,
       .seq_lens = {20, 17},
       .fmt = bf16,
       .q_dtype = "fp32"},
      {.batch = 2,
       .q_len = 3,
       .heads = 1,
       .block_size = 16,
       .seq_lens = {20, 3},
       .fmt = bf16,
       .q_dtype = "fp16"},
      {.batch = 2,
       .q_len = 2,
       .heads = 3,
       .block_size = 1,
       .seq_lens = {40, 2},
       .fmt = i8c,
       .q_dtype = "fp32"},
  };
  // Plus random shapes for every format.
  std::mt19937_64 rng(seed ^ 0x5eedc11ull);
  auto pick = [&](std::initializer_list<int> l) { return *(l.begin() + rng() % l.size()); };
  for (const Format& f : kFormats)
    for (int k = 0; k < 2; ++k) {
      Spec s{.batch = pick({1, 2, 3, 4}),
             .q_len = pick({1, 2, 3, 4}),
             .heads = pick({1, 3, 16}),
             .block_size = pick({1, 16, 64, 128}),
             .causal = rng() % 3 != 0,
             .fmt = f};
      for (int b = 0; b < s.batch; ++b) {
        const int ql = 1 + int(rng() % s.q_len);
        const bool pad = s.batch > 1 && rng() % 5 == 0;
        s.q_lens.push_back(pad ? int(rng() % (s.q_len + 1)) : ql);
        s.seq_lens.push_back(pad ? 0 : ql + int(rng() % 200));
      }
      if (rng() % 3 == 0) {  // no q_lens.npy: every sequence has q_len rows
        s.q_lens.clear();
        for (auto& l : s.seq_lens) l = l ? std::max(l, s.q_len) : 0;
      }
      v.push_back(s);
    }
  return v;
}

TEST(CliDecode, RefMatchesFloat64AttentionOnFiles) {
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE(trace(seed));
  const TestDir tmp;
  const fs::path& dir = tmp.path;
  const std::vector<Spec> sweep = ref_sweep(seed);
  for (size_t k = 0; k < sweep.size(); ++k) {
    const Spec& s = sweep[k];
    SCOPED_TRACE("case " + std::to_string(k) + ": " + s.describe());
    const FileCase c = make_case(s, seed + k);
    const fs::path in = dir / ("in" + std::to_string(k)), out = dir / ("out" + std::to_string(k));
    write_case(c, in);
    const std::optional<Outputs> o = run_and_check(c, in, out, "ref", {}, kRefTol);
    if (!o) continue;
    // q_used: q in the working type (the kv type, bf16 for int8, unless --q-dtype says otherwise).
    const std::string qt = !s.q_dtype.empty() ? s.q_dtype : s.fmt.kv == "fp16" ? "fp16" : "bf16";
    check_q_rounded(c, *o, qt);
    const Int8Steps st = int8_steps(c, s.fmt.scale, std::nullopt, {});
    check_kv_used(c, *o, &st);
  }
}

// ---- 2. --impl fast at DESIGN §6 tolerances --------------------------------------------------

// An orthogonal array L8(2^5): every pair of option values appears together in two runs.
constexpr int kL8[8][5] = {{0, 0, 0, 0, 0}, {0, 0, 0, 1, 1}, {0, 1, 1, 0, 0}, {0, 1, 1, 1, 1},
                           {1, 0, 1, 0, 1}, {1, 0, 1, 1, 0}, {1, 1, 0, 0, 1}, {1, 1, 0, 1, 0}};

// simd: the --isa of the runs that do not force the portable kernels ("best", or "avx2" so that
// the AVX2 kernels run on an AVX-512 machine too).
std::vector<std::string> fast_options(const int* row, const char* simd) {
  return {"--threads",   row[0] ? "2" : "1",           "--chunk", row[1] ? "4" : "1",
          "--reduction", row[2] ? "last" : "separate", "--up",    row[3] ? "spill" : "resident",
          "--isa",       row[4] ? "portable" : simd};
}

bool cpu_has_avx2() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("f16c");
}

// int8: q_used is the bf16 query with each row's latent quantized (step max|q'|/127, q' = q times
// the channel scales in channel mode) and de-quantized; the rope part stays bf16.
void check_q_quantized(const FileCase& c, const Outputs& out, const Int8Steps& st) {
  const float* qu = out.q_used.as<float>();
  int64_t bad = 0;
  for (int64_t r = 0; r < c.rows(); ++r) {
    const float* q = c.q.data() + r * kDk;
    double mx = 0;
    for (int x = 0; x < kDv; ++x)
      mx = std::max(
          mx, std::fabs(double(to_bf16(q[x])) * (st.mode == "channel" ? st.channel[x] : 1.f)));
    for (int x = 0; x < kDk; ++x) {
      const double qb = to_bf16(q[x]), got = qu[r * kDk + x];
      const double step = x >= kDv ? 0 : mx / 127 / (st.mode == "channel" ? st.channel[x] : 1.f);
      if (!(std::fabs(got - qb) <= 0.5 * step * (1 + 1e-4)) && bad++ < 5)
        ADD_FAILURE() << "q_used row " << r << " dim " << x << " = " << got << ", bf16 q " << qb
                      << ", allowed step " << step;
    }
  }
  EXPECT_EQ(bad, 0);
}

TEST(CliDecode, FastMatchesFloat64AttentionForEveryFormatAndOption) {
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE(trace(seed));
  const TestDir tmp;
  const fs::path& dir = tmp.path;
  int n = 0;
  for (const Format& f : kFormats) {
    // A long sequence the planner can split across 2 threads, a padding entry, a short one; and
    // odd heads with a block size that is not the kernels' 64-token tile.
    const Spec specs[] = {
        {.batch = 3,
         .q_len = 2,
         .heads = 16,
         .block_size = 16,
         .seq_lens = {700, 0, 75},
         .q_lens = {2, 1, 1},
         .fmt = f},
        {.batch = 2,
         .q_len = 3,
         .heads = 3,
         .block_size = 1,
         .seq_lens = {300, 3},
         .q_lens = {3, 1},
         .causal = false,
         .fmt = f},
        {.batch = 1, .q_len = 4, .heads = 128, .block_size = 128, .seq_lens = {140}, .fmt = f}};
    for (size_t k = 0; k < std::size(specs); ++k) {
      SCOPED_TRACE(specs[k].describe());
      const FileCase c = make_case(specs[k], seed + 1000 + n);
      const fs::path in = dir / ("in" + std::to_string(n++));
      write_case(c, in);
      if (k == 0) {  // the split-KV reduction only runs when a sequence is split across workers
        const Plan plan = make_plan({.batch = c.s.batch,
                                     .seq_lens = c.s.seq_lens.data(),
                                     .q_lens = c.s.q_lens.data(),
                                     .q_len = c.s.q_len,
                                     .num_heads = c.s.heads,
                                     .num_workers = 2,
                                     .kv_tile = 64});
        ASSERT_GT(plan.num_partials, 0) << "the first case no longer splits a sequence";
      }
      const int runs = k == 0 ? 8 : 2;
      for (int j = 0; j < runs; ++j) {
        const int* row = kL8[k == 0 ? j : j * 7];
        // Every other run forces the AVX2 kernels (where the CPU has them), the others take the
        // best ones: each format and case runs both.
        const std::vector<std::string> opt =
            fast_options(row, cpu_has_avx2() && (k + j) % 2 ? "avx2" : "best");
        std::string opts;
        for (const auto& s : opt) opts += s + " ";
        SCOPED_TRACE("options " + opts);
        const fs::path out = dir / ("out" + std::to_string(n++));
        const std::optional<Outputs> o =
            run_and_check(c, in, out, "fast", opt, f.kv == "int8" ? kInt8Tol : kFp16Tol);
        if (!o || j > 0) continue;
        const Int8Steps st = int8_steps(c, f.scale, std::nullopt, {});
        check_kv_used(c, *o, &st);
        if (f.kv == "int8")
          check_q_quantized(c, *o, st);
        else
          check_q_rounded(c, *o, f.kv);
      }
    }
  }
}

// With no --impl the fast path runs: for int8 its q_used is the quantized query, not bf16 q.
TEST(CliDecode, FastIsTheDefaultImpl) {
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE(trace(seed));
  const TestDir tmp;
  const fs::path& dir = tmp.path;
  const Spec s{.batch = 2,
               .q_len = 2,
               .heads = 16,
               .block_size = 64,
               .seq_lens = {90, 2},
               .fmt = {"int8", "token"}};
  const FileCase c = make_case(s, seed);
  write_case(c, dir / "in");
  const std::optional<Outputs> o =
      run_and_check(c, dir / "in", dir / "out", "", {"--threads", "2"}, kInt8Tol);
  ASSERT_TRUE(o);
  const float* qu = o->q_used.as<float>();
  int64_t differ = 0;
  for (size_t i = 0; i < c.q.size(); ++i) differ += qu[i] != to_bf16(c.q[i]);
  EXPECT_GT(differ, int64_t(c.q.size() / 4)) << "q_used looks like the reference's bf16 query";
  check_q_quantized(c, *o, int8_steps(c, "token", std::nullopt, {}));
}

// ---- 3. given int8 scales --------------------------------------------------------------------

TEST(CliDecode, GivenTensorScaleIsUsedAndSaturates) {
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE(trace(seed));
  const TestDir tmp;
  const fs::path& dir = tmp.path;
  const Spec s{.batch = 2,
               .q_len = 2,
               .heads = 3,
               .block_size = 16,
               .seq_lens = {45, 7},
               .q_lens = {2, 1},
               .fmt = {"int8", "tensor"}};
  const FileCase c = make_case(s, seed);
  write_case(c, dir / "in");
  // A third of the calibrated step: every value beyond 127 * scale saturates.
  const Int8Steps calibrated = int8_steps(c, "tensor", std::nullopt, {});
  const float scale = calibrated.tensor / 3.f;
  write_npy((dir / "in" / "kv_tensor_scale.npy").string(), DType::f32, {1}, &scale);
  for (const char* impl : {"ref", "fast"}) {
    SCOPED_TRACE(impl);
    const fs::path out = dir / (std::string("out_") + impl);
    const std::optional<Outputs> o = run_and_check(c, dir / "in", out, impl, {"--threads", "2"},
                                                   impl == std::string("ref") ? kRefTol : kInt8Tol);
    ASSERT_TRUE(o);
    const Int8Steps st = int8_steps(c, "tensor", scale, {});
    EXPECT_GT(check_kv_used(c, *o, &st), 0) << "no value saturated";
    float mx = 0;
    for (int64_t sl = 0; sl < int64_t(c.used.size()); ++sl)
      if (c.used[sl])
        for (int x = 0; x < kDv; ++x)
          mx = std::max(mx, std::fabs(o->kv_used.as<float>()[sl * kDk + x]));
    EXPECT_NEAR(mx, 127 * scale, 1e-6 * 127 * scale) << "largest |kv_used| should be 127 * scale";
  }
}

TEST(CliDecode, GivenChannelScalesAreUsed) {
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE(trace(seed));
  const TestDir tmp;
  const fs::path& dir = tmp.path;
  const Spec s{.batch = 2,
               .q_len = 1,
               .heads = 16,
               .block_size = 64,
               .seq_lens = {100, 30},
               .fmt = {"int8", "channel"}};
  const FileCase c = make_case(s, seed);
  write_case(c, dir / "in");
  // Each channel's scale between a quarter and twice its calibrated one: some channels
  // saturate, others keep headroom.
  const Int8Steps calibrated = int8_steps(c, "channel", std::nullopt, {});
  std::vector<float> cs(kDv);
  for (int x = 0; x < kDv; ++x)
    cs[x] = calibrated.channel[x] * (0.25f + 1.75f * float(x % 8) / 7.f);
  write_npy((dir / "in" / "kv_channel_scale.npy").string(), DType::f32, {kDv}, cs.data());
  for (const char* impl : {"ref", "fast"}) {
    SCOPED_TRACE(impl);
    const fs::path out = dir / (std::string("out_") + impl);
    const std::optional<Outputs> o = run_and_check(c, dir / "in", out, impl, {"--threads", "2"},
                                                   impl == std::string("ref") ? kRefTol : kInt8Tol);
    ASSERT_TRUE(o);
    const Int8Steps st = int8_steps(c, "channel", std::nullopt, cs);
    EXPECT_GT(check_kv_used(c, *o, &st), 0) << "no value saturated";
    if (impl == std::string("fast")) check_q_quantized(c, *o, st);
  }
}

// ---- 4. refusals: exit 2, a message naming the problem, nothing written ---------------------

// Writes a .npy by hand (any descr, any header text), for dtypes write_npy does not produce.
void write_raw_npy(const fs::path& p, const std::string& header_dict, const void* data,
                   size_t bytes) {
  std::string h = header_dict;
  while ((10 + h.size() + 1) % 64) h += ' ';
  h += '\n';
  std::string f("\x93NUMPY\x01\x00", 8);
  f += char(h.size() & 0xff);
  f += char(h.size() >> 8);
  f += h;
  f.append(static_cast<const char*>(data), bytes);
  std::ofstream(p, std::ios::binary).write(f.data(), std::streamsize(f.size()));
}

struct Refusal {
  std::string name;
  // Changes a valid case's input dir (and may add options); returns the extra arguments.
  std::function<std::vector<std::string>(const FileCase&, const fs::path& in)> mutate;
  std::vector<std::string> message;  // every one of these must appear in stderr
  Format fmt = {"bf16", "token"};
};

std::vector<int32_t> with(std::vector<int32_t> v, size_t i, int32_t x) {
  v[i] = x;
  return v;
}

std::vector<Refusal> refusals() {
  using Args = std::vector<std::string>;
  auto i32 = [](const fs::path& p, std::vector<int64_t> shape, const std::vector<int32_t>& v) {
    write_npy(p.string(), DType::i32, shape, v.data());
  };
  return {
      {"missing q.npy",
       [](const FileCase&, const fs::path& in) {
         fs::remove(in / "q.npy");
         return Args{};
       },
       {"q.npy", "cannot open"}},
      {"missing block_table.npy",
       [](const FileCase&, const fs::path& in) {
         fs::remove(in / "block_table.npy");
         return Args{};
       },
       {"block_table.npy"}},
      {"truncated kv.npy",
       [](const FileCase&, const fs::path& in) {
         fs::resize_file(in / "kv.npy", fs::file_size(in / "kv.npy") - 100);
         return Args{};
       },
       {"kv.npy", "truncated"}},
      {"malformed header",
       [](const FileCase& c, const fs::path& in) {
         write_raw_npy(in / "q.npy",
                       "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2, 3, 576) ",
                       c.q.data(), 4 * 6 * 576);
         return Args{};
       },
       {"q.npy", "malformed header"}},
      {"not a npy file",
       [](const FileCase&, const fs::path& in) {
         std::ofstream(in / "seq_lens.npy") << "seq_lens = [1, 2]\n";
         return Args{};
       },
       {"seq_lens.npy", "not a .npy"}},
      {"float64 kv",
       [](const FileCase& c, const fs::path& in) {
         std::vector<double> kv(c.kv.begin(), c.kv.end());
         write_raw_npy(in / "kv.npy",
                       "{'descr': '<f8', 'fortran_order': False, 'shape': (" +
                           std::to_string(c.num_blocks) + ", " + std::to_string(c.s.block_size) +
                           ", 576), }",
                       kv.data(), kv.size() * 8);
         return Args{};
       },
       {"kv.npy", "float64"}},
      {"int64 seq_lens",
       [](const FileCase& c, const fs::path& in) {
         std::vector<int64_t> sl(c.s.seq_lens.begin(), c.s.seq_lens.end());
         write_raw_npy(in / "seq_lens.npy",
                       "{'descr': '<i8', 'fortran_order': False, 'shape': (" +
                           std::to_string(c.s.batch) + ",), }",
                       sl.data(), sl.size() * 8);
         return Args{};
       },
       {"seq_lens.npy", "int64"}},
      {"float32 block_table",
       [](const FileCase& c, const fs::path& in) {
         std::vector<float> bt(c.block_table.begin(), c.block_table.end());
         write_npy((in / "block_table.npy").string(), DType::f32, {c.s.batch, c.max_blocks},
                   bt.data());
         return Args{};
       },
       {"block_table.npy", "float32", "int32"}},
      {"q last dim 512",
       [](const FileCase& c, const fs::path& in) {
         std::vector<float> q(size_t(c.rows()) * 512, 0.5f);
         write_npy((in / "q.npy").string(), DType::f32, {c.s.batch, c.s.q_len, c.s.heads, 512},
                   q.data());
         return Args{};
       },
       {"q.npy", "512", "576"}},
      {"q rank 3",
       [](const FileCase& c, const fs::path& in) {
         write_npy((in / "q.npy").string(), DType::f32, {c.s.batch * c.s.q_len, c.s.heads, 576},
                   c.q.data());
         return Args{};
       },
       {"q.npy", "rank"}},
      {"kv last dim 512",
       [](const FileCase& c, const fs::path& in) {
         write_npy((in / "kv.npy").string(), DType::f32, {c.num_blocks, c.s.block_size, 512},
                   c.kv.data());
         return Args{};
       },
       {"kv.npy", "576"}},
      {"block_table rows != B",
       [i32](const FileCase& c, const fs::path& in) {
         i32(in / "block_table.npy", {c.s.batch - 1, c.max_blocks}, c.block_table);
         return Args{};
       },
       {"block_table.npy", "dimension 0"}},
      {"seq_lens length != B",
       [i32](const FileCase& c, const fs::path& in) {
         std::vector<int32_t> sl = c.s.seq_lens;
         sl.push_back(1);
         i32(in / "seq_lens.npy", {c.s.batch + 1}, sl);
         return Args{};
       },
       {"seq_lens.npy", "dimension 0"}},
      {"q_lens length != B",
       [i32](const FileCase& c, const fs::path& in) {
         i32(in / "q_lens.npy", {c.s.batch - 1}, c.s.q_lens);
         return Args{};
       },
       {"q_lens.npy"}},
      {"seq_len beyond the block table",
       [i32](const FileCase& c, const fs::path& in) {
         // One token more than the table's 4 columns of 16 hold.
         const int over = c.max_blocks * c.s.block_size + 1;
         i32(in / "seq_lens.npy", {c.s.batch}, with(c.s.seq_lens, 0, over));
         return Args{};
       },
       {"seq_lens[0] = 65", "exceeds 4 blocks x 16 tokens"}},
      {"block id out of range",
       [i32](const FileCase& c, const fs::path& in) {
         i32(in / "block_table.npy", {c.s.batch, c.max_blocks},
             with(c.block_table, 1, int32_t(c.num_blocks)));
         return Args{};
       },
       {"block_table[0, 1]", "outside the pool"}},
      {"-1 inside the used range",
       [i32](const FileCase& c, const fs::path& in) {
         i32(in / "block_table.npy", {c.s.batch, c.max_blocks}, with(c.block_table, 0, -1));
         return Args{};
       },
       {"block_table[0, 0] = -1"}},
      {"seq_len < q_len",
       [i32](const FileCase& c, const fs::path& in) {
         i32(in / "seq_lens.npy", {c.s.batch}, with(c.s.seq_lens, 1, 1));
         return Args{};
       },
       {"seq_lens[1] = 1", "shorter"}},
      {"seq_len < q_len without q_lens.npy",
       [i32](const FileCase& c, const fs::path& in) {
         fs::remove(in / "q_lens.npy");
         i32(in / "seq_lens.npy", {c.s.batch}, with(c.s.seq_lens, 0, 1));
         return Args{};
       },
       {"seq_lens[0] = 1", "shorter"}},
      {"q_lens > q_len",
       [i32](const FileCase& c, const fs::path& in) {
         i32(in / "q_lens.npy", {c.s.batch}, with(c.s.q_lens, 0, c.s.q_len + 1));
         return Args{};
       },
       {"q_lens[0] = 3"}},
      {"q_lens 0 for a non-empty sequence",
       [i32](const FileCase& c, const fs::path& in) {
         i32(in / "q_lens.npy", {c.s.batch}, with(c.s.q_lens, 1, 0));
         return Args{};
       },
       {"q_lens[1] = 0"}},
      {"negative q_lens",
       [i32](const FileCase& c, const fs::path& in) {
         i32(in / "q_lens.npy", {c.s.batch}, with(c.s.q_lens, 0, -1));
         return Args{};
       },
       {"q_lens[0] = -1"}},
      {"negative seq_len",
       [i32](const FileCase& c, const fs::path& in) {
         i32(in / "seq_lens.npy", {c.s.batch}, with(c.s.seq_lens, 2, -4));
         return Args{};
       },
       {"seq_lens[2] = -4"}},
      {"NaN in a used slot when calibrating a tensor scale",
       [](const FileCase& c, const fs::path& in) {
         std::vector<float> kv = c.kv;
         kv[c.slot(0, 5) * kDk + 7] = std::nanf("");
         write_npy((in / "kv.npy").string(), DType::f32, {c.num_blocks, c.s.block_size, kDk},
                   kv.data());
         return Args{};
       },
       {"not finite"},
       {"int8", "tensor"}},
      {"tensor scale file with --kv-scale token",
       [](const FileCase&, const fs::path& in) {
         const float s = 0.01f;
         write_npy((in / "kv_tensor_scale.npy").string(), DType::f32, {1}, &s);
         return Args{};
       },
       {"kv_tensor_scale.npy", "token"},
       {"int8", "token"}},
      {"channel scale file with --kv-scale tensor",
       [](const FileCase&, const fs::path& in) {
         const std::vector<float> s(kDv, 0.01f);
         write_npy((in / "kv_channel_scale.npy").string(), DType::f32, {kDv}, s.data());
         return Args{};
       },
       {"kv_channel_scale.npy", "tensor"},
       {"int8", "tensor"}},
      {"tensor scale file with --kv-scale channel",
       [](const FileCase&, const fs::path& in) {
         const float s = 0.01f;
         write_npy((in / "kv_tensor_scale.npy").string(), DType::f32, {1}, &s);
         return Args{};
       },
       {"kv_tensor_scale.npy", "channel"},
       {"int8", "channel"}},
      {"channel scale file of the wrong length",
       [](const FileCase&, const fs::path& in) {
         const std::vector<float> s(kDk, 0.01f);
         write_npy((in / "kv_channel_scale.npy").string(), DType::f32, {kDk}, s.data());
         return Args{};
       },
       {"kv_channel_scale.npy", "512"},
       {"int8", "channel"}},
      {"negative tensor scale",
       [](const FileCase&, const fs::path& in) {
         const float s = -0.5f;
         write_npy((in / "kv_tensor_scale.npy").string(), DType::f32, {1}, &s);
         return Args{};
       },
       {"-0.5"},
       {"int8", "tensor"}},
      {"--kv-dtype int4",
       [](const FileCase&, const fs::path&) {
         return Args{"--kv-dtype", "int4"};
       },
       {"int4"}},
      {"--kv-scale row",
       [](const FileCase&, const fs::path&) {
         return Args{"--kv-scale", "row"};
       },
       {"row"}},
      {"--q-dtype int8",
       [](const FileCase&, const fs::path&) {
         return Args{"--q-dtype", "int8"};
       },
       {"--q-dtype"}},
      {"--chunk 0",
       [](const FileCase&, const fs::path&) {
         return Args{"--chunk", "0"};
       },
       {"--chunk 0"}},
      {"--impl foo",
       [](const FileCase&, const fs::path&) {
         return Args{"--impl", "foo"};
       },
       {"--impl foo"}},
      {"--threads -1",
       [](const FileCase&, const fs::path&) {
         return Args{"--threads", "-1"};
       },
       {"--threads -1"}},
      {"--threads abc",
       [](const FileCase&, const fs::path&) {
         return Args{"--threads", "abc"};
       },
       {"--threads", "abc"}},
      {"--reduction both",
       [](const FileCase&, const fs::path&) {
         return Args{"--reduction", "both"};
       },
       {"--reduction both"}},
      {"--up maybe",
       [](const FileCase&, const fs::path&) {
         return Args{"--up", "maybe"};
       },
       {"--up maybe"}},
      {"--isa avx9",
       [](const FileCase&, const fs::path&) {
         return Args{"--isa", "avx9"};
       },
       {"--isa avx9"}},
      {"--scale inf",
       [](const FileCase&, const fs::path&) {
         return Args{"--scale", "inf"};
       },
       {"inf"}},
      {"unknown option",
       [](const FileCase&, const fs::path&) { return Args{"--bogus"}; },
       {"--bogus"}},
  };
}

bool empty_dir(const fs::path& d, std::string* listing) {
  for (const auto& e : fs::directory_iterator(d)) *listing += e.path().filename().string() + " ";
  return listing->empty();
}

TEST(CliDecode, RefusalsExit2WithAMessageAndWriteNothing) {
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE(trace(seed));
  const TestDir tmp;
  const fs::path& dir = tmp.path;
  // seq_lens {40, 20, 0}: sequence 0 uses 3 blocks of 16, the table has 4 columns.
  const Spec base{.batch = 3,
                  .q_len = 2,
                  .heads = 3,
                  .block_size = 16,
                  .seq_lens = {40, 20, 0},
                  .q_lens = {2, 2, 1}};
  int k = 0;
  for (const Refusal& rf : refusals()) {
    SCOPED_TRACE("refusal: " + rf.name);
    Spec s = base;
    s.fmt = rf.fmt;
    const FileCase c = make_case(s, seed + k);
    ASSERT_EQ(c.max_blocks, 4);
    const fs::path in = dir / ("in" + std::to_string(k)), out = dir / ("out" + std::to_string(k));
    ++k;
    write_case(c, in);
    fs::create_directories(out);
    const std::vector<std::string> extra = rf.mutate(c, in);
    std::vector<std::string> args = set_options(decode_args(c, in, out, ""), {"--threads", "2"});
    const RunResult r = run_cli(set_options(args, extra), dir);
    EXPECT_EQ(r.code, 2) << r.describe();
    for (const auto& m : rf.message)
      EXPECT_NE(r.err.find(m), std::string::npos) << "stderr should name '" << m << "'\n"
                                                  << r.describe();
    std::string listing;
    EXPECT_TRUE(empty_dir(out, &listing)) << "the out dir holds: " << listing;
  }
}

// A failure while writing the outputs (here: a directory in the way of lse.npy) leaves none of
// the four files behind; a scale file given for a 16-bit cache is refused.
TEST(CliDecode, FailedOutputWriteLeavesNothingAndScalesNeedInt8) {
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE(trace(seed));
  const TestDir tmp;
  const fs::path& dir = tmp.path;
  const Spec s{.batch = 2, .q_len = 1, .heads = 2, .block_size = 16, .seq_lens = {30, 5},
               .q_lens = {1, 1}};
  const FileCase c = make_case(s, seed);
  const fs::path in = dir / "in", out = dir / "out";
  write_case(c, in);
  fs::create_directories(out / "lse.npy" / "occupied");
  RunResult r = run_cli(decode_args(c, in, out, ""), dir);
  EXPECT_EQ(r.code, 2) << r.describe();
  EXPECT_NE(r.err.find("lse.npy"), std::string::npos) << r.describe();
  std::string listing;
  for (const auto& e : fs::directory_iterator(out)) listing += e.path().filename().string() + " ";
  EXPECT_EQ(listing, "lse.npy ") << "the out dir holds: " << listing;

  const float scale = 0.05f;
  write_npy((in / "kv_tensor_scale.npy").string(), DType::f32, {1}, &scale);
  const fs::path out2 = dir / "out2";
  r = run_cli(decode_args(c, in, out2, ""), dir);
  EXPECT_EQ(r.code, 2) << r.describe();
  EXPECT_NE(r.err.find("kv_tensor_scale.npy"), std::string::npos) << r.describe();
  EXPECT_FALSE(fs::exists(out2 / "o.npy"));
}

// The base case of the refusals runs (so each refusal comes from its own change).
TEST(CliDecode, RefusalBaseCaseRuns) {
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE(trace(seed));
  const TestDir tmp;
  const fs::path& dir = tmp.path;
  for (const Format& f : kFormats) {
    SCOPED_TRACE(f.name());
    const Spec s{.batch = 3,
                 .q_len = 2,
                 .heads = 3,
                 .block_size = 16,
                 .seq_lens = {40, 20, 0},
                 .q_lens = {2, 2, 1},
                 .fmt = f};
    const FileCase c = make_case(s, seed);
    const fs::path in = dir / ("in_" + f.kv + f.scale);
    write_case(c, in);
    run_and_check(c, in, dir / ("out_" + f.kv + f.scale), "", {"--threads", "2"},
                  f.kv == "int8" ? kInt8Tol : kFp16Tol);
  }
}

TEST(CliDecode, NeitherFilesNorRandomIsRefused) {
  const TestDir tmp;
  const fs::path& dir = tmp.path;
  fs::create_directories(dir / "out");
  const std::vector<std::vector<std::string>> cases = {{"decode"},
                                                       {"decode", "--in", (dir / "in").string()},
                                                       {"decode", "--out", (dir / "out").string()}};
  for (const auto& args : cases) {
    const RunResult r = run_cli(args, dir);
    EXPECT_EQ(r.code, 2) << r.describe();
    EXPECT_NE(r.err.find("--in"), std::string::npos) << r.describe();
    EXPECT_NE(r.err.find("--random"), std::string::npos) << r.describe();
  }
  std::string listing;
  EXPECT_TRUE(empty_dir(dir / "out", &listing)) << listing;
}

// A refused run does not even make the out dir.
TEST(CliDecode, MissingInputDirIsRefusedAndNoOutDirIsMade) {
  const TestDir tmp;
  const fs::path& dir = tmp.path;
  const RunResult r =
      run_cli({"decode", "--in", (dir / "nowhere").string(), "--out", (dir / "out").string()}, dir);
  EXPECT_EQ(r.code, 2) << r.describe();
  EXPECT_NE(r.err.find("nowhere"), std::string::npos) << r.describe();
  EXPECT_FALSE(fs::exists(dir / "out"));
}

// ---- 5. --random and --help ------------------------------------------------------------------

TEST(CliDecode, RandomCasePassesForEveryFormatAndImpl) {
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE(trace(seed));
  const TestDir tmp;
  const fs::path& dir = tmp.path;
  for (const Format& f : kFormats)
    for (const char* impl : {"ref", "fast"}) {
      std::vector<std::string> args{"decode",    "--random", std::to_string(seed % 1000000),
                                    "--batch",   "2",        "--heads",
                                    "16",        "--q-len",  "2",
                                    "--context", "300",      "--block-size",
                                    "16",        "--impl",   impl,
                                    "--threads", "2"};
      const auto fa = f.args();
      args.insert(args.end(), fa.begin(), fa.end());
      const RunResult r = run_cli(args, dir);
      SCOPED_TRACE(r.describe());
      EXPECT_EQ(r.code, 0);
      EXPECT_NE(r.out.find("PASS"), std::string::npos);
      EXPECT_EQ(r.out.find("FAIL"), std::string::npos);
      EXPECT_NE(r.out.find("time "), std::string::npos);
      EXPECT_NE(r.out.find(" ms"), std::string::npos);
      EXPECT_NE(r.out.find(std::string("kv ") + f.kv), std::string::npos);
    }
}

// The formats of issue 12 (fp8, int8 group scales) on files through the fast path at DESIGN §6
// against the float64 attention on what the kernel saw (q_used, kv_used); with --kv-original the
// end-to-end error against the unquantized cache is printed beside the kernel's; a random case
// prints both; --kv-original with --random is refused.
TEST(CliDecode, NewFormatsOnFilesAndTheEndToEndError) {
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE(trace(seed));
  const TestDir tmp;
  const fs::path& dir = tmp.path;
  const Format formats[] = {{"fp8", "token"}, {"int8", "group32"}, {"int8", "group64"},
                            {"int8", "group128"}};
  int n = 0;
  for (const Format& f : formats) {
    SCOPED_TRACE(f.name());
    const Spec s{.batch = 3, .q_len = 2, .heads = 16, .block_size = 16,
                 .seq_lens = {400, 0, 75}, .q_lens = {2, 1, 1}, .fmt = f};
    const FileCase c = make_case(s, seed + n);
    const fs::path in = dir / ("in" + std::to_string(n)), out = dir / ("out" + std::to_string(n));
    ++n;
    write_case(c, in);
    std::vector<std::string> args = decode_args(c, in, out, "fast");
    args.insert(args.end(), {"--threads", "2", "--kv-original", (in / "kv.npy").string()});
    const RunResult r = run_cli(args, dir);
    ASSERT_EQ(r.code, 0) << r.describe();
    EXPECT_NE(r.out.find("de-quantized cache"), std::string::npos) << r.describe();
    EXPECT_NE(r.out.find("end to end"), std::string::npos) << r.describe();
    const std::optional<Outputs> o = read_outputs(c, out);
    ASSERT_TRUE(o);
    const Expected e = attention_f64(c, o->q_used.as<float>(), o->kv_used.as<float>());
    check_against(c, *o, e, f.kv == "int8" ? kInt8Tol : kFp16Tol);

    std::vector<std::string> ra{"decode", "--random", std::to_string(seed % 1000), "--batch", "2",
                                "--heads", "16", "--context", "300", "--threads", "2"};
    const auto fa = f.args();
    ra.insert(ra.end(), fa.begin(), fa.end());
    const RunResult rr = run_cli(ra, dir);
    EXPECT_EQ(rr.code, 0) << rr.describe();
    EXPECT_NE(rr.out.find("PASS"), std::string::npos) << rr.describe();
    EXPECT_NE(rr.out.find("end to end"), std::string::npos) << rr.describe();
    ra.insert(ra.end(), {"--kv-original", (in / "kv.npy").string()});
    EXPECT_EQ(run_cli(ra, dir).code, 2);
  }
}

// `mla formats` prints one row per data kind and format, every error finite.
TEST(CliFormats, PrintsEveryFormatFinite) {
  const TestDir tmp;
  const RunResult r = run_cli({"formats", "--heads", "4", "--batch", "2", "--context", "200",
                               "--threads", "2"}, tmp.path);
  ASSERT_EQ(r.code, 0) << r.describe();
  for (const char* row : {"| normal | bf16 |", "| outlier channels | fp8 (exact scales) |",
                          "| attention sink | int8 group64 |", "| normal | int8 tensor |",
                          "| outlier channels | fp8 (pow2 scales) |",
                          "| outlier channels | int8 token + hadamard |"})
    EXPECT_NE(r.out.find(row), std::string::npos) << row << "\n" << r.describe();
  EXPECT_EQ(r.out.find("nan"), std::string::npos) << r.describe();
  size_t rows = 0;
  for (size_t i = r.out.find("\n| "); i != std::string::npos; i = r.out.find("\n| ", i + 1)) ++rows;
  EXPECT_EQ(rows, 2 + 3 * 14u) << r.describe();  // header, separator, 3 data kinds x 14 formats
}

TEST(CliDecode, HelpListsTheOptions) {
  const TestDir tmp;
  const fs::path& dir = tmp.path;
  const RunResult r = run_cli({"decode", "--help"}, dir);
  EXPECT_EQ(r.code, 0) << r.describe();
  for (const char* opt : {"--in",      "--out",     "--random",     "--batch",     "--heads",
                          "--q-len",   "--context", "--block-size", "--kv-dtype",  "--kv-scale",
                          "--q-dtype", "--scale",   "--causal",     "--no-causal", "--threads",
                          "--impl",    "--chunk",   "--reduction",  "--up",        "--isa",
                          "--kv-rotate", "--fp8-scale"})
    EXPECT_NE(r.out.find(opt), std::string::npos) << "--help does not list " << opt << "\n"
                                                  << r.describe();
}

// ---- NaN / Inf in the files (DESIGN §6; README "NaN and Inf") ----------------------------------

// NaN and Inf in q.npy and kv.npy reach the kernels: exactly the rows that see them come out NaN
// (o and lse), every other row finite, for each cache format and 1 or 3 threads.
TEST(CliDecode, NanAndInfInTheFilesFollowTheRule) {
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const TestDir tmp;
  for (const Format& f : kFormats) {
    Spec s{.batch = 2, .q_len = 2, .heads = 4, .block_size = 16, .seq_lens = {70, 45}, .fmt = f};
    FileCase c = make_case(s, seed);
    c.q[((0 * 2 + 1) * 4 + 2) * kDk + 5] = std::nanf("");  // row (0, 1, head 2)
    // Sequence 1, position 44 (seen by its row 1 only): the rope (int8 keeps it in bf16).
    c.kv[c.slot(1, 44) * kDk + kDv + 3] = std::numeric_limits<float>::infinity();
    const fs::path in = tmp.path / (f.kv + f.scale) / "in";
    write_case(c, in);
    for (const char* threads : {"1", "3"}) {
      const fs::path out = tmp.path / (f.kv + f.scale) / (std::string("out") + threads);
      const RunResult r =
          run_cli(set_options(decode_args(c, in, out, ""), {"--threads", threads}), tmp.path);
      ASSERT_EQ(r.code, 0) << r.describe();
      const auto o = read_outputs(c, out);
      ASSERT_TRUE(o);
      for (int b = 0; b < 2; ++b)
        for (int i = 0; i < 2; ++i)
          for (int h = 0; h < 4; ++h) {
            const int64_t row = (b * 2 + i) * 4 + h;
            const bool bad = (b == 0 && i == 1 && h == 2) || (b == 1 && i == 1);
            EXPECT_EQ(bad, std::isnan(o->lse.as<float>()[row])) << f.name() << " row " << row;
            for (int d = 0; d < kDv; d += 97)
              EXPECT_EQ(bad, std::isnan(o->o.as<float>()[row * kDv + d])) << f.name() << " row " << row;
          }
    }
  }
}

// A finite value the cache cannot hold (fp16 past 65504) or a NaN latent value of an int8 cache
// is refused, naming its place; the same value in a slot no sequence uses is not.
TEST(CliDecode, RefusesValuesTheCacheCannotHold) {
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const TestDir tmp;
  struct Bad {
    Format fmt;
    float value;
    int dim;
  };
  for (const Bad& x : {Bad{{"fp16", "token"}, 1e6f, 7}, Bad{{"int8", "token"}, std::nanf(""), 9},
                       Bad{{"int8", "tensor"}, std::numeric_limits<float>::infinity(), 9},
                       Bad{{"int8", "channel"}, std::nanf(""), 3}}) {
    Spec s{.batch = 2, .q_len = 1, .heads = 2, .block_size = 16, .seq_lens = {30, 20}, .fmt = x.fmt};
    FileCase c = make_case(s, seed);
    const fs::path dir = tmp.path / x.fmt.name();
    // In an unused slot: fine.
    int64_t unused = 0;
    while (c.used[unused]) ++unused;
    c.kv[unused * kDk + x.dim] = x.value;
    write_case(c, dir / "in");
    RunResult r = run_cli(decode_args(c, dir / "in", dir / "out_ok", ""), dir);
    EXPECT_EQ(r.code, 0) << r.describe();
    // In sequence 1 position 13: refused, named, nothing written.
    c.kv[c.slot(1, 13) * kDk + x.dim] = x.value;
    write_case(c, dir / "in");
    r = run_cli(decode_args(c, dir / "in", dir / "out_bad", ""), dir);
    EXPECT_EQ(r.code, 2) << r.describe();
    EXPECT_NE(r.err.find("sequence 1 position 13"), std::string::npos) << r.describe();
    EXPECT_NE(r.err.find("[" + std::to_string(x.dim) + "]"), std::string::npos) << r.describe();
    EXPECT_FALSE(fs::exists(dir / "out_bad" / "o.npy"));
  }
}

// ---- all-or-nothing outputs (tools/mla/decode.cc: write_outputs) ------------------------------

// The four output files of a run, by name.
std::map<std::string, std::string> output_set(const fs::path& out) {
  std::map<std::string, std::string> m;
  for (const char* n : {"o.npy", "lse.npy", "q_used.npy", "kv_used.npy"})
    if (fs::exists(out / n)) m[n] = slurp(out / n);
  return m;
}

std::vector<std::string> siblings_of(const fs::path& out) {
  std::vector<std::string> v;
  for (const auto& e : fs::directory_iterator(out.parent_path()))
    if (e.path().filename().string().rfind("." + out.filename().string() + ".mla-", 0) == 0)
      v.push_back(e.path().filename().string());
  return v;
}

// A failed or killed run (simulated with the MLA_TEST_CRASH_AT / MLA_TEST_FAIL_AT hooks) leaves
// --out holding either the previous run's four files or the new run's four, never a mix, and
// never none; what a killed run leaves beside --out is removed by the next run.
TEST(CliDecode, OutputsAreAllOrNothingAcrossFailuresAndKills) {
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const TestDir tmp;
  const fs::path& dir = tmp.path;
  const Spec s{.batch = 2, .q_len = 1, .heads = 2, .block_size = 16, .seq_lens = {30, 5}};
  const FileCase a = make_case(s, seed), b = make_case(s, seed + 1);
  write_case(a, dir / "in_a");
  write_case(b, dir / "in_b");
  ASSERT_EQ(run_cli(decode_args(b, dir / "in_b", dir / "want_b", ""), dir).code, 0);
  const auto set_b = output_set(dir / "want_b");
  const fs::path out = dir / "work" / "out";
  ASSERT_EQ(run_cli(decode_args(a, dir / "in_a", out, ""), dir).code, 0);
  const auto set_a = output_set(out);
  ASSERT_EQ(set_a.size(), 4u);
  ASSERT_NE(set_a, set_b);

  auto run_b_with = [&](const char* var, const char* point) {
    ::setenv(var, point, 1);
    const RunResult r = run_cli(decode_args(b, dir / "in_b", out, ""), dir);
    ::unsetenv(var);
    return r;
  };
  // Failures (an exception at each point): the previous set survives, nothing is left beside it.
  for (const char* point : {"file0", "file2", "file3", "swap"}) {
    const RunResult r = run_b_with("MLA_TEST_FAIL_AT", point);
    EXPECT_EQ(r.code, 2) << point << "\n" << r.describe();
    EXPECT_NE(r.err.find("nothing written"), std::string::npos) << r.describe();
    EXPECT_EQ(output_set(out), set_a) << "failure at " << point << " changed the previous outputs";
    EXPECT_TRUE(siblings_of(out).empty()) << "failure at " << point << " left " << siblings_of(out)[0];
  }
  // Kills before the swap: the previous set, and a stale sibling the next run removes.
  for (const char* point : {"file0", "file1", "file3", "swap"}) {
    const RunResult r = run_b_with("MLA_TEST_CRASH_AT", point);
    EXPECT_EQ(r.code, 137) << r.describe();
    EXPECT_EQ(output_set(out), set_a) << "a kill at " << point << " changed the previous outputs";
    EXPECT_FALSE(siblings_of(out).empty());
  }
  // A kill right after the swap: the new set whole.
  EXPECT_EQ(run_b_with("MLA_TEST_CRASH_AT", "swapped").code, 137);
  EXPECT_EQ(output_set(out), set_b) << "a kill after the swap left a mix";
  // The next run cleans up after the killed ones.
  ASSERT_EQ(run_cli(decode_args(a, dir / "in_a", out, ""), dir).code, 0);
  EXPECT_EQ(output_set(out), set_a);
  EXPECT_TRUE(siblings_of(out).empty()) << siblings_of(out)[0];
  // An --out holding anything else is refused before any work, and left as it was.
  std::ofstream(out / "notes.txt") << "mine";
  const RunResult r = run_cli(decode_args(b, dir / "in_b", out, ""), dir);
  EXPECT_EQ(r.code, 2) << r.describe();
  EXPECT_NE(r.err.find("notes.txt"), std::string::npos) << r.describe();
  EXPECT_EQ(output_set(out), set_a);
  EXPECT_EQ(slurp(out / "notes.txt"), "mine");
}

// ---- bounded options --------------------------------------------------------------------------

// Out-of-range numbers are refused with exit 2 and a message naming the option: never exit 3
// ("internal error"), a wrap-around, or gigabytes allocated first.
TEST(CliDecode, NumericOptionsAreBounded) {
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const TestDir tmp;
  const fs::path& dir = tmp.path;
  const Spec s{.batch = 1, .q_len = 1, .heads = 2, .block_size = 16, .seq_lens = {50}};
  const FileCase c = make_case(s, seed);
  write_case(c, dir / "in");
  struct Bad {
    std::vector<std::string> args;
    std::string names;
  };
  const std::vector<Bad> files = {{{"--chunk", "1000000"}, "--chunk"},
                                  {{"--chunk", "33554432"}, "--chunk"},
                                  {{"--chunk", "67108865"}, "--chunk"},
                                  {{"--threads", "2147483647"}, "--threads"},
                                  {{"--threads", "5000"}, "--threads"}};
  for (const Bad& b : files) {
    const RunResult r = run_cli(set_options(decode_args(c, dir / "in", dir / "out", ""), b.args), dir);
    EXPECT_EQ(r.code, 2) << r.describe();
    EXPECT_NE(r.err.find(b.names), std::string::npos) << r.describe();
    EXPECT_FALSE(fs::exists(dir / "out"));
  }
  const std::vector<Bad> random = {
      {{"--context", "2147483647"}, "--context"},
      {{"--batch", "100000"}, "--batch"},
      {{"--heads", "100000"}, "--heads"},
      {{"--block-size", "2147483647"}, "--block-size"},
      {{"--q-len", "0"}, "--q-len"},
      // In range one by one, together far beyond any memory: refused with the estimate.
      {{"--batch", "65536", "--heads", "1024", "--context", "16777216"}, "GB"}};
  for (const Bad& b : random) {
    std::vector<std::string> args = {"decode", "--random", "1", "--threads", "1"};
    args.insert(args.end(), b.args.begin(), b.args.end());
    const RunResult r = run_cli(args, dir);
    EXPECT_EQ(r.code, 2) << r.describe();
    EXPECT_NE(r.err.find(b.names), std::string::npos) << r.describe();
  }
}

}  // namespace
}  // namespace mla
