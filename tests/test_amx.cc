// The AMX kernels beyond the registry-wide suites (test_decode, test_nonfinite and
// test_accuracy_bounds run decode_i8_avx512amx where the CPU has AMX and its emulation,
// decode_i8_avx512amxemu, on every AVX-512 CPU):
//   - the emulation computes what the tile unit computes (where the CPU has AMX);
//   - a refused tile permission (MLA_AMX=0 stands in for it) leaves AMX unoffered: --isa best runs
//     the next kernel, --isa amx is refused with a message.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>

#include "cpu/attention/isa.h"
#include "cpu/attention/kernel.h"
#include "harness/random_case.h"
#include "mla/attention.h"

namespace mla {
namespace {

// The emulation computes each tile instruction as the tile unit does: the integer forms exactly;
// tdpbf16ps, whose order of summation inside one instruction Intel does not document, within a
// few fp32 roundings of the exact sum (the hardware sums the 32 products of a row and column before
// adding C: measured, that matches it on 237 of 256 outputs, sequential sums on 155).
TEST(Amx, EmulatedTileOpsMatchTheInstructions) {
  if (!cpu::cpu_has_amx_set()) GTEST_SKIP() << "this CPU has no AMX (or no tile permission)";
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  auto bf16 = [](float x) {
    uint32_t u;
    std::memcpy(&u, &x, 4);
    return uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  };
  auto f32 = [](uint16_t h) {
    const uint32_t u = uint32_t(h) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  };
  for (int trial = 0; trial < 20; ++trial) {
    alignas(64) unsigned char a[1024], b[1024], c0[1024], c1[1024], c2[1024];
    for (int i = 0; i < 1024; ++i) a[i] = rng(), b[i] = rng(), c0[i] = rng();
    for (int op = 0; op < 2; ++op) {  // the integer forms: bit-identical
      std::memcpy(c1, c0, 1024), std::memcpy(c2, c0, 1024);
      cpu::amx_tile_op_hw(op, c1, a, b);
      cpu::amx_tile_op_emu(op, c2, a, b);
      EXPECT_EQ(std::memcmp(c1, c2, 1024), 0) << "op " << op;
      // and the emulation is the documented sum (one element, by hand)
      int32_t want, got;
      std::memcpy(&want, c0 + 5 * 64 + 4 * 7, 4);
      for (int k = 0; k < 64; ++k)
        want += (op == 0 ? int(int8_t(a[5 * 64 + k])) : int(a[5 * 64 + k])) *
                int(int8_t(b[(k / 4) * 64 + 7 * 4 + k % 4]));
      std::memcpy(&got, c2 + 5 * 64 + 4 * 7, 4);
      EXPECT_EQ(got, want) << "op " << op;
    }
    uint16_t* a16 = reinterpret_cast<uint16_t*>(a);
    uint16_t* b16 = reinterpret_cast<uint16_t*>(b);
    float* cf = reinterpret_cast<float*>(c0);
    for (int i = 0; i < 512; ++i) a16[i] = bf16(nd(rng) * 10), b16[i] = bf16(nd(rng) * 10);
    for (int i = 0; i < 256; ++i) cf[i] = nd(rng) * 100;
    std::memcpy(c1, c0, 1024), std::memcpy(c2, c0, 1024);
    cpu::amx_tile_op_hw(2, c1, a, b);
    cpu::amx_tile_op_emu(2, c2, a, b);
    const float* h = reinterpret_cast<const float*>(c1);
    const float* e = reinterpret_cast<const float*>(c2);
    for (int m = 0; m < 16; ++m)
      for (int n = 0; n < 16; ++n) {
        double exact = cf[m * 16 + n], mag = std::fabs(exact);
        for (int k = 0; k < 32; ++k) {
          const double p = double(f32(a16[m * 32 + k])) * f32(b16[(k / 2) * 32 + 2 * n + k % 2]);
          exact += p, mag += std::fabs(p);
        }
        const double tol = 40 * 0x1p-24 * mag;
        EXPECT_NEAR(h[m * 16 + n], exact, tol) << m << "," << n;
        EXPECT_NEAR(e[m * 16 + n], exact, tol) << m << "," << n;
      }
  }
}

// Runs `env mla args`, returning the exit code and stderr.
int run_cli(const std::string& env, const std::string& args, std::string* err) {
  const char* cli = std::getenv("MLA_CLI");
  if (!cli || !*cli) {
    ADD_FAILURE() << "MLA_CLI is not set (ctest sets it to the mla executable)";
    return -1;
  }
  const std::string errf = testing::TempDir() + "amx_err_" + std::to_string(getpid()) + ".txt";
  const int st = std::system((env + " '" + cli + "' " + args + " >/dev/null 2>'" + errf + "'").c_str());
  std::ifstream in(errf);
  std::stringstream ss;
  ss << in.rdbuf();
  *err = ss.str();
  std::remove(errf.c_str());
  return st == -1 ? -1 : WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

TEST(Amx, RefusedPermissionFallsBackAndForcingIsAnError) {
  const std::string random = "decode --random 3 --kv-dtype int8 --batch 2 --heads 8 --context 200";
  std::string err;
  // Refused: best runs the next kernel and passes; amx is an error naming what is missing.
  EXPECT_EQ(run_cli("MLA_AMX=0", random + " --isa best", &err), 0) << err;
  EXPECT_EQ(run_cli("MLA_AMX=0", random + " --isa amx", &err), 2) << err;
  EXPECT_NE(err.find("AMX"), std::string::npos) << err;
  // The emulation needs no permission.
  if (cpu::cpu_has_avx512_set()) {
    EXPECT_EQ(run_cli("MLA_AMX=0", random + " --isa amx-emu", &err), 0) << err;
  }
  // Granted (where the CPU has AMX): forcing it runs.
  if (cpu::cpu_has_amx_set()) {
    EXPECT_EQ(run_cli("", random + " --isa amx", &err), 0) << err;
  }
}

}  // namespace
}  // namespace mla
