// .npy reading and writing: round trips of every dtype, hand-made files of each format version and
// header spelling, every refusal (each message must name the file and the problem), atomic writes,
// and, where python3 has numpy, files exchanged with numpy both ways.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "mla/dtype.h"
#include "mla/npy.h"
#include "mla/status.h"

namespace mla {
namespace {

namespace fs = std::filesystem;

// A fresh directory per test under $MLA_TEST_TMP (or the system temp dir); kept if the test fails.
class Npy : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* env = std::getenv("MLA_TEST_TMP");
    const fs::path base = env && *env ? fs::path(env) : fs::temp_directory_path();
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = base / ("test_npy_" + std::to_string(::getpid()) + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    if (HasFailure())
      std::cerr << "files kept in " << dir_ << "\n";
    else
      fs::remove_all(dir_);
  }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  std::vector<std::string> listing() const {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir_))
      names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  }

  fs::path dir_;
};

void write_file(const std::string& p, const std::string& bytes) {
  std::ofstream f(p, std::ios::binary);
  f.write(bytes.data(), std::streamsize(bytes.size()));
  ASSERT_TRUE(f.good()) << p;
}

std::string read_file(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// A .npy file with the header text taken verbatim (no padding added).
std::string npy_file(int major, int minor, const std::string& header, const std::string& data) {
  std::string s = "\x93NUMPY";
  s += char(major);
  s += char(minor);
  const size_t n = header.size();
  s += char(n & 0xff);
  s += char((n >> 8) & 0xff);
  if (major != 1) {
    s += char((n >> 16) & 0xff);
    s += char((n >> 24) & 0xff);
  }
  return s + header + data;
}

template <class T>
std::string bytes_of(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

std::string header(const std::string& descr, const std::string& shape, bool fortran = false) {
  return "{'descr': '" + descr + "', 'fortran_order': " + (fortran ? "True" : "False") +
         ", 'shape': " + shape + ", }\n";
}

// Runs `stmt`, which must throw mla::Error whose message holds `file` and `word`.
#define EXPECT_NPY_ERROR(stmt, file, word)                                                       \
  do {                                                                                           \
    try {                                                                                        \
      stmt;                                                                                      \
      ADD_FAILURE() << #stmt " did not throw; expected an error about '" << (word) << "'";       \
    } catch (const ::mla::Error& e) {                                                            \
      const std::string m_ = e.what();                                                           \
      EXPECT_NE(m_.find(file), std::string::npos) << "message does not name the file: " << m_;   \
      EXPECT_NE(m_.find(word), std::string::npos) << "message lacks '" << (word) << "': " << m_; \
    }                                                                                            \
  } while (0)

// ---- round trips ------------------------------------------------------------------------------

TEST_F(Npy, RoundTripEveryDtypeAndShape) {
  const uint32_t seed = 12345;
  std::mt19937 rng(seed);
  const std::vector<std::vector<int64_t>> shapes = {{},        {7},    {3, 5},
                                                    {2, 3, 4}, {0, 4}, {1, 1, 1, 9}};
  for (DType t : {DType::f32, DType::f16, DType::bf16, DType::i8, DType::i32, DType::u16}) {
    for (const auto& shape : shapes) {
      int64_t n = 1;
      for (int64_t d : shape) n *= d;
      std::vector<unsigned char> data(size_t(n) * dtype_size(t));
      for (auto& b : data) b = static_cast<unsigned char>(rng());
      const std::string p = path(std::string("a_") + dtype_name(t) + ".npy");
      SCOPED_TRACE(std::string(dtype_name(t)) + " shape size " + std::to_string(shape.size()) +
                   " seed " + std::to_string(seed));
      write_npy(p, t, shape, data.data());

      const NpyArray a = read_npy(p);
      // bf16 is stored as uint16 (numpy has none); asking for bf16 gives it back as bf16.
      EXPECT_EQ(a.dtype, t == DType::bf16 ? DType::u16 : t);
      EXPECT_EQ(a.shape, shape);
      EXPECT_EQ(a.numel(), n);
      EXPECT_EQ(a.bytes, data);
      EXPECT_EQ(read_npy(p, t, shape).dtype, t);

      // Data starts on a 64-byte boundary; the header names the shape the way numpy does.
      const std::string raw = read_file(p);
      EXPECT_EQ((raw.size() - data.size()) % 64, 0u);
      EXPECT_EQ(raw[6], 1);
      EXPECT_EQ(raw[raw.size() - data.size() - 1], '\n');
      std::string want_shape = "'shape': (";
      for (size_t i = 0; i < shape.size(); ++i)
        want_shape += (i ? ", " : "") + std::to_string(shape[i]);
      want_shape += shape.size() == 1 ? ",)" : ")";
      EXPECT_NE(raw.find(want_shape), std::string::npos) << want_shape << " not in " << raw;
    }
  }
  // Nothing but the finished files: no temporary left behind.
  for (const auto& name : listing()) EXPECT_EQ(name.find(".tmp"), std::string::npos) << name;
}

TEST_F(Npy, ShapeStrAndNumel) {
  NpyArray a;
  a.shape = {2, 3, 576};
  EXPECT_EQ(a.shape_str(), "[2, 3, 576]");
  EXPECT_EQ(a.numel(), 2 * 3 * 576);
  a.shape = {};
  EXPECT_EQ(a.shape_str(), "[]");
  EXPECT_EQ(a.numel(), 1);
  a.shape = {4, 0};
  EXPECT_EQ(a.numel(), 0);
}

TEST_F(Npy, OverwriteReplacesFile) {
  const std::string p = path("x.npy");
  const std::vector<float> a = {1, 2, 3}, b = {4, 5};
  write_npy(p, DType::f32, {3}, a.data());
  write_npy(p, DType::f32, {2}, b.data());
  const NpyArray r = read_npy(p, DType::f32, {2});
  EXPECT_EQ(r.as<float>()[0], 4.0f);
  EXPECT_EQ(r.as<float>()[1], 5.0f);
  EXPECT_EQ(listing(), std::vector<std::string>{"x.npy"});
}

TEST_F(Npy, LongHeaderUsesVersion2) {
  // 25000 dimensions of 1 make a header longer than 65535 bytes.
  const std::vector<int64_t> shape(25000, 1);
  const float v = 3.5f;
  const std::string p = path("long.npy");
  write_npy(p, DType::f32, shape, &v);
  const std::string raw = read_file(p);
  EXPECT_EQ(raw[6], 2);
  EXPECT_EQ((raw.size() - 4) % 64, 0u);
  const NpyArray a = read_npy(p);
  EXPECT_EQ(a.shape, shape);
  EXPECT_EQ(a.as<float>()[0], 3.5f);
}

// ---- hand-made files --------------------------------------------------------------------------

TEST_F(Npy, ReadsVersion1) {
  const std::vector<float> v = {1.5f, -2, 3, 4, 5, 6};
  const std::string p = path("v1.npy");
  write_file(p, npy_file(1, 0, header("<f4", "(2, 3)"), bytes_of(v)));
  const NpyArray a = read_npy(p, DType::f32, {2, 3});
  EXPECT_EQ(a.shape_str(), "[2, 3]");
  EXPECT_EQ(std::vector<float>(a.as<float>(), a.as<float>() + 6), v);
}

TEST_F(Npy, ReadsVersion2) {
  const std::vector<int8_t> v = {-128, -1, 0, 1, 127};
  const std::string p = path("v2.npy");
  write_file(p, npy_file(2, 0, header("|i1", "(5,)"), bytes_of(v)));
  const NpyArray a = read_npy(p, DType::i8, {5});
  EXPECT_EQ(std::vector<int8_t>(a.as<int8_t>(), a.as<int8_t>() + 5), v);
}

TEST_F(Npy, ReadsVersion3ScalarUtf8) {
  const std::vector<uint16_t> v = {0xbeef};
  const std::string p = path("v3.npy");
  write_file(p, npy_file(3, 0, header("<u2", "()"), bytes_of(v)));
  const NpyArray a = read_npy(p, DType::u16, {});
  EXPECT_TRUE(a.shape.empty());
  EXPECT_EQ(a.numel(), 1);
  EXPECT_EQ(a.as<uint16_t>()[0], 0xbeef);
}

TEST_F(Npy, ReadsOddlySpelledHeaders) {
  const std::vector<int32_t> v = {1, -2, 3, -4, 5, -6};
  struct Case {
    const char* name;
    std::string header;
    std::vector<int64_t> shape;
  };
  const Case cases[] = {
      {"reordered_nospace", "{'shape':(2,3),'fortran_order':False,'descr':'<i4'}", {2, 3}},
      {"double_quotes", "{\"descr\": \"<i4\", \"shape\": (6,), \"fortran_order\": False}\n", {6}},
      {"trailing_commas",
       "{ 'descr' : '<i4' , 'fortran_order' : False , 'shape' : ( 3 , 2 , ) , }",
       {3, 2}},
      {"python2_longs",
       "{'descr': '<i4', 'fortran_order': False, 'shape': (2L, 3L), }  \n",
       {2, 3}},
      {"tabs_and_newlines",
       "{'descr':\t'<i4',\n 'fortran_order': False,\n 'shape': (1, 6)}\n",
       {1, 6}},
      {"equals_order", "{'descr': '=i4', 'fortran_order': False, 'shape': (6,)}", {6}},
  };
  for (const Case& c : cases) {
    const std::string p = path(std::string(c.name) + ".npy");
    write_file(p, npy_file(1, 0, c.header, bytes_of(v)));
    const NpyArray a = read_npy(p);
    EXPECT_EQ(a.dtype, DType::i32) << c.name;
    EXPECT_EQ(a.shape, c.shape) << c.name;
    EXPECT_EQ(std::vector<int32_t>(a.as<int32_t>(), a.as<int32_t>() + 6), v) << c.name;
  }
}

TEST_F(Npy, ReadsEveryDescrSpelling) {
  const std::pair<const char*, DType> cases[] = {
      {"<f4", DType::f32}, {"<f2", DType::f16}, {"|i1", DType::i8}, {"<i1", DType::i8},
      {">i1", DType::i8},  {"<i4", DType::i32}, {"<u2", DType::u16}};
  for (const auto& [descr, t] : cases) {
    const std::string p = path("d.npy");
    write_file(p, npy_file(1, 0, header(descr, "(2,)"), std::string(2 * dtype_size(t), '\x01')));
    EXPECT_EQ(read_npy(p).dtype, t) << descr;
  }
}

TEST_F(Npy, ReadsEmptyArray) {
  const std::string p = path("empty.npy");
  write_file(p, npy_file(1, 0, header("<f4", "(0, 576)"), ""));
  const NpyArray a = read_npy(p, DType::f32, {-1, 576});
  EXPECT_EQ(a.numel(), 0);
  EXPECT_TRUE(a.bytes.empty());
}

// ---- refusals ---------------------------------------------------------------------------------

TEST_F(Npy, RefusesMissingOrUnreadable) {
  EXPECT_NPY_ERROR(read_npy(path("nope.npy")), "nope.npy", "cannot open");
  fs::create_directories(dir_ / "adir.npy");
  EXPECT_NPY_ERROR(read_npy(path("adir.npy")), "adir.npy", "read error");
}

TEST_F(Npy, RefusesBadMagicAndVersion) {
  const std::string data(24, '\0');
  const std::string good = npy_file(1, 0, header("<f4", "(6,)"), data);
  write_file(path("empty.npy"), "");
  EXPECT_NPY_ERROR(read_npy(path("empty.npy")), "empty.npy", "magic");
  write_file(path("short.npy"), "\x93NUM");
  EXPECT_NPY_ERROR(read_npy(path("short.npy")), "short.npy", "magic");
  std::string bad = good;
  bad[5] = 'Z';
  write_file(path("magic.npy"), bad);
  EXPECT_NPY_ERROR(read_npy(path("magic.npy")), "magic.npy", "magic");
  write_file(path("zip.npy"), "PK\x03\x04" + good);
  EXPECT_NPY_ERROR(read_npy(path("zip.npy")), "zip.npy", "magic");
  write_file(path("v4.npy"), npy_file(4, 0, header("<f4", "(6,)"), data));
  EXPECT_NPY_ERROR(read_npy(path("v4.npy")), "v4.npy", "version 4.0");
  write_file(path("v11.npy"), npy_file(1, 1, header("<f4", "(6,)"), data));
  EXPECT_NPY_ERROR(read_npy(path("v11.npy")), "v11.npy", "version 1.1");
}

TEST_F(Npy, RefusesTruncatedHeader) {
  const std::string good = npy_file(1, 0, header("<f4", "(6,)"), std::string(24, '\0'));
  write_file(path("noversion.npy"), good.substr(0, 7));
  EXPECT_NPY_ERROR(read_npy(path("noversion.npy")), "noversion.npy", "truncated");
  write_file(path("nolen.npy"), good.substr(0, 9));
  EXPECT_NPY_ERROR(read_npy(path("nolen.npy")), "nolen.npy", "truncated");
  write_file(path("half.npy"), good.substr(0, 30));
  EXPECT_NPY_ERROR(read_npy(path("half.npy")), "half.npy", "header truncated");
  // A version-2 length field claiming 4 GiB of header.
  std::string huge = "\x93NUMPY\x02";
  huge += std::string(1, '\0') + "\xff\xff\xff\xff" + header("<f4", "(6,)");
  write_file(path("hugelen.npy"), huge);
  EXPECT_NPY_ERROR(read_npy(path("hugelen.npy")), "hugelen.npy", "header truncated");
}

TEST_F(Npy, RefusesMalformedHeaders) {
  const std::string data(24, '\0');
  const std::pair<const char*, std::string> cases[] = {
      {"nobrace", "'descr': '<f4', 'fortran_order': False, 'shape': (6,)"},
      {"noshape", "{'descr': '<f4', 'fortran_order': False}"},
      {"nodescr", "{'fortran_order': False, 'shape': (6,)}"},
      {"noorder", "{'descr': '<f4', 'shape': (6,)}"},
      {"dupkey", "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (6,)}"},
      {"badbool", "{'descr': '<f4', 'fortran_order': Maybe, 'shape': (6,)}"},
      {"openshape", "{'descr': '<f4', 'fortran_order': False, 'shape': (6,}"},
      {"letters", "{'descr': '<f4', 'fortran_order': False, 'shape': (2, x)}"},
      {"junk", "{'descr': '<f4', 'fortran_order': False, 'shape': (6,)} junk"},
      {"unterminated", "{'descr': '<f4, 'fortran_order': False, 'shape': (6,)}"},
      {"extrakey", "{'descr': '<f4', 'fortran_order': False, 'shape': (6,), 'extra': 1}"},
      {"nocolon", "{'descr' '<f4', 'fortran_order': False, 'shape': (6,)}"},
      {"nocomma", "{'descr': '<f4' 'fortran_order': False, 'shape': (6,)}"},
      {"structured", "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (6,)}"},
      {"emptyheader", ""},
  };
  for (const auto& [name, h] : cases) {
    const std::string file = std::string(name) + ".npy";
    write_file(path(file), npy_file(1, 0, h, data));
    EXPECT_NPY_ERROR(read_npy(path(file)), file, "malformed header");
  }
}

TEST_F(Npy, RefusesBigEndianFortranAndOtherDtypes) {
  write_file(path("be.npy"), npy_file(1, 0, header(">f4", "(2,)"), std::string(8, '\0')));
  EXPECT_NPY_ERROR(read_npy(path("be.npy")), "be.npy", "big-endian");
  write_file(path("be2.npy"), npy_file(1, 0, header(">u2", "(2,)"), std::string(4, '\0')));
  EXPECT_NPY_ERROR(read_npy(path("be2.npy")), "be2.npy", "big-endian");
  write_file(path("fortran.npy"),
             npy_file(1, 0, header("<f4", "(2, 2)", true), std::string(16, '\0')));
  EXPECT_NPY_ERROR(read_npy(path("fortran.npy")), "fortran.npy", "Fortran");
  const std::pair<const char*, const char*> others[] = {
      {"<f8", "float64"}, {"<i8", "int64"}, {"|u1", "uint8"},     {"|b1", "bool"},
      {"<i2", "int16"},   {"|f4", "|f4"},   {"<c8", "complex64"}, {"|O", "object"}};
  for (const auto& [descr, word] : others) {
    write_file(path("other.npy"), npy_file(1, 0, header(descr, "(2,)"), std::string(16, '\0')));
    EXPECT_NPY_ERROR(read_npy(path("other.npy")), "other.npy", "unsupported dtype");
    EXPECT_NPY_ERROR(read_npy(path("other.npy")), "other.npy", word);
  }
}

TEST_F(Npy, RefusesBadDimensions) {
  write_file(path("neg.npy"), npy_file(1, 0, header("<f4", "(-2, 3)"), std::string(24, '\0')));
  EXPECT_NPY_ERROR(read_npy(path("neg.npy")), "neg.npy", "negative");
  write_file(path("digits.npy"),
             npy_file(1, 0, header("<f4", "(99999999999999999999,)"), std::string(4, '\0')));
  EXPECT_NPY_ERROR(read_npy(path("digits.npy")), "digits.npy", "too large");
  write_file(path("overflow.npy"),
             npy_file(1, 0, header("<f4", "(4611686018427387904, 4)"), std::string(4, '\0')));
  EXPECT_NPY_ERROR(read_npy(path("overflow.npy")), "overflow.npy", "too large");
  // Claims 4 TB; must be refused as truncated without trying to allocate it all.
  write_file(path("claims.npy"),
             npy_file(1, 0, header("<f4", "(1000000000000,)"), std::string(8, '\0')));
  EXPECT_NPY_ERROR(read_npy(path("claims.npy")), "claims.npy",
                   "truncated: expected 4000000000000 bytes of data, found 8");
}

TEST_F(Npy, RefusesShortOrLongData) {
  write_file(path("short.npy"), npy_file(1, 0, header("<f4", "(2, 3)"), std::string(20, '\0')));
  EXPECT_NPY_ERROR(read_npy(path("short.npy")), "short.npy",
                   "truncated: expected 24 bytes of data, found 20");
  write_file(path("nodata.npy"), npy_file(1, 0, header("<i4", "()"), ""));
  EXPECT_NPY_ERROR(read_npy(path("nodata.npy")), "nodata.npy",
                   "truncated: expected 4 bytes of data, found 0");
  write_file(path("long.npy"), npy_file(1, 0, header("<f4", "(2, 3)"), std::string(27, '\0')));
  EXPECT_NPY_ERROR(read_npy(path("long.npy")), "long.npy", "has 3 bytes after the data");
  write_file(path("longer.npy"),
             npy_file(1, 0, header("|i1", "(1,)"), std::string(1 + 200000, '\0')));
  EXPECT_NPY_ERROR(read_npy(path("longer.npy")), "longer.npy", "has 200000 bytes after the data");
}

TEST_F(Npy, CheckedReadNamesFileAndShapes) {
  const std::vector<int32_t> v(6, 7);
  const std::string p = path("ints.npy");
  write_npy(p, DType::i32, {2, 3}, v.data());
  EXPECT_NPY_ERROR(read_npy(p, DType::f32, {2, 3}), "ints.npy", "dtype is int32, expected float32");
  EXPECT_NPY_ERROR(read_npy(p, DType::i32, {-1, 3, 4}), "ints.npy",
                   "shape is [2, 3], expected [*, 3, 4]");
  EXPECT_NPY_ERROR(read_npy(p, DType::i32, {6}), "ints.npy", "rank 2, expected rank 1");
  EXPECT_NPY_ERROR(read_npy(p, DType::i32, {2, 4}), "ints.npy", "dimension 1 is 3, expected 4");
  EXPECT_NPY_ERROR(read_npy(p, DType::i32, {-1, 4}), "ints.npy", "expected [*, 4]");
  EXPECT_EQ(read_npy(p, DType::i32, {-1, 3}).numel(), 6);
  EXPECT_EQ(read_npy(p, DType::i32, {2, -1}).numel(), 6);
  EXPECT_EQ(read_npy(p, DType::i32, {-1, -1}).numel(), 6);
  const std::string q = path("halfs.npy");
  write_npy(q, DType::u16, {3}, std::vector<uint16_t>(3).data());
  EXPECT_NPY_ERROR(read_npy(q, DType::f16, {3}), "halfs.npy", "dtype is uint16, expected float16");
  EXPECT_EQ(read_npy(q, DType::bf16, {3}).dtype, DType::bf16);
}

// ---- failed writes leave nothing --------------------------------------------------------------

TEST_F(Npy, WriteToMissingDirectoryThrowsAndLeavesNothing) {
  const std::vector<float> v(4, 1.0f);
  const std::string p = path("no_such_dir/out.npy");
  EXPECT_NPY_ERROR(write_npy(p, DType::f32, {4}, v.data()), p, "cannot create");
  EXPECT_FALSE(fs::exists(p));
  EXPECT_FALSE(fs::exists(dir_ / "no_such_dir"));
  EXPECT_TRUE(listing().empty());
}

TEST_F(Npy, FailedRenameRemovesTemporary) {
  // The target is a non-empty directory: the temporary is written, the rename fails.
  fs::create_directories(dir_ / "target.npy" / "inside");
  const std::vector<float> v(4, 1.0f);
  EXPECT_NPY_ERROR(write_npy(path("target.npy"), DType::f32, {4}, v.data()), "target.npy",
                   "rename");
  EXPECT_EQ(listing(), std::vector<std::string>{"target.npy"});
  EXPECT_TRUE(fs::is_directory(dir_ / "target.npy" / "inside"));
}

TEST_F(Npy, WriteRefusesBadArguments) {
  const std::vector<float> v(4, 1.0f);
  EXPECT_NPY_ERROR(write_npy(path("neg.npy"), DType::f32, {-1, 4}, v.data()), "neg.npy",
                   "negative");
  EXPECT_NPY_ERROR(write_npy(path("null.npy"), DType::f32, {4}, nullptr), "null.npy", "null");
  EXPECT_NPY_ERROR(write_npy(path("huge.npy"), DType::f32, {int64_t(1) << 62, 4}, v.data()),
                   "huge.npy", "too large");
  EXPECT_TRUE(listing().empty());
  write_npy(path("empty.npy"), DType::f32, {0}, nullptr);  // no data needed for no elements
  EXPECT_EQ(read_npy(path("empty.npy")).numel(), 0);
}

// ---- numpy itself -----------------------------------------------------------------------------

// The values both sides generate for element i of each type; f16 values are exact in half so
// numpy's direct float64 -> float16 cast agrees with ours.
const char* const kPython = R"PY(
import sys
import numpy as np
d = sys.argv[1]
i = np.arange(60, dtype=np.float64)
ii = np.arange(60, dtype=np.int64)
want = {
    'f4': (i * 0.37 - 5).astype(np.float32),
    'f2': (i * 0.125 - 4).astype(np.float16),
    'i1': ((ii * 7) % 256 - 128).astype(np.int8),
    'i4': (ii * 100003 - 7).astype(np.int32),
    'u2': ((ii * 257) % 65536).astype(np.uint16),
}
for k, v in want.items():
    v = v.reshape(3, 4, 5)
    a = np.load(f'{d}/ours_{k}.npy')
    assert a.dtype == v.dtype, (k, a.dtype)
    assert a.shape == v.shape, (k, a.shape)
    assert np.array_equal(a, v), k
    np.save(f'{d}/py_{k}.npy', v)
s = np.load(f'{d}/ours_scalar.npy')
assert s.shape == () and s.dtype == np.float32 and s == np.float32(2.5), s
np.save(f'{d}/py_scalar.npy', np.array(-1.5, dtype=np.float32))
np.save(f'{d}/py_empty.npy', np.zeros((0, 3), dtype=np.int32))
# numpy's own float32 -> float16 rounding, for random bit patterns and every tie point.
rng = np.random.default_rng(1)
src = rng.integers(0, 2**32, size=100000, dtype=np.uint64).astype(np.uint32).view(np.float32)
h = np.arange(0x7c00, dtype=np.uint16).view(np.float16).astype(np.float64)
mid = ((h[:-1] + h[1:]) / 2).astype(np.float32)
src = np.concatenate([src, mid, -mid, np.float32([65520, -65520, 65519.996, 1e-8, -6e-8])])
np.save(f'{d}/py_f32_src.npy', src)
with np.errstate(all='ignore'):
    np.save(f'{d}/py_f16_of_src.npy', src.astype(np.float16))
print('python side ok')
)PY";

template <class T>
std::vector<T> pattern(DType t) {
  std::vector<T> v(60);
  for (int64_t i = 0; i < 60; ++i) {
    const double x = double(i);
    if constexpr (std::is_same_v<T, float>) v[i] = float(x * 0.37 - 5);
    if constexpr (std::is_same_v<T, uint16_t>)
      v[i] = t == DType::f16 ? f32_to_f16(float(x * 0.125 - 4)) : uint16_t((i * 257) % 65536);
    if constexpr (std::is_same_v<T, int8_t>) v[i] = int8_t((i * 7) % 256 - 128);
    if constexpr (std::is_same_v<T, int32_t>) v[i] = int32_t(i * 100003 - 7);
  }
  return v;
}

TEST_F(Npy, ExchangesFilesWithNumpy) {
  const char* env = std::getenv("MLA_PYTHON");
  const std::string python = env && *env ? env : "python3";
  // scripts/test.sh sets MLA_PYTHON to the project's venv (scripts/venv.sh), where numpy must be.
  if (std::system((python + " -c 'import numpy' >/dev/null 2>&1").c_str()) != 0) {
    if (env && *env) FAIL() << "MLA_PYTHON=" << python << " has no numpy (run scripts/venv.sh)";
    GTEST_SKIP() << python << " with numpy is not available";
  }

  const std::vector<int64_t> shape = {3, 4, 5};
  const auto f4 = pattern<float>(DType::f32);
  const auto f2 = pattern<uint16_t>(DType::f16);
  const auto i1 = pattern<int8_t>(DType::i8);
  const auto i4 = pattern<int32_t>(DType::i32);
  const auto u2 = pattern<uint16_t>(DType::u16);
  write_npy(path("ours_f4.npy"), DType::f32, shape, f4.data());
  write_npy(path("ours_f2.npy"), DType::f16, shape, f2.data());
  write_npy(path("ours_i1.npy"), DType::i8, shape, i1.data());
  write_npy(path("ours_i4.npy"), DType::i32, shape, i4.data());
  write_npy(path("ours_u2.npy"), DType::u16, shape, u2.data());
  const float scalar = 2.5f;
  write_npy(path("ours_scalar.npy"), DType::f32, {}, &scalar);

  { std::ofstream(path("check.py")) << kPython; }
  const std::string cmd =
      python + " " + path("check.py") + " " + dir_.string() + " > " + path("py.log") + " 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << "python side failed:\n" << read_file(path("py.log"));

  auto same = [](const NpyArray& a, const auto& v) {
    return a.bytes.size() == v.size() * sizeof(v[0]) &&
           std::memcmp(a.bytes.data(), v.data(), a.bytes.size()) == 0;
  };
  EXPECT_TRUE(same(read_npy(path("py_f4.npy"), DType::f32, shape), f4));
  EXPECT_TRUE(same(read_npy(path("py_f2.npy"), DType::f16, shape), f2));
  EXPECT_TRUE(same(read_npy(path("py_i1.npy"), DType::i8, shape), i1));
  EXPECT_TRUE(same(read_npy(path("py_i4.npy"), DType::i32, shape), i4));
  EXPECT_TRUE(same(read_npy(path("py_u2.npy"), DType::u16, shape), u2));
  EXPECT_EQ(read_npy(path("py_scalar.npy"), DType::f32, {}).as<float>()[0], -1.5f);
  EXPECT_EQ(read_npy(path("py_empty.npy"), DType::i32, {0, 3}).numel(), 0);

  const NpyArray src = read_npy(path("py_f32_src.npy"), DType::f32, {-1});
  const NpyArray dst = read_npy(path("py_f16_of_src.npy"), DType::f16, {src.shape[0]});
  int64_t mismatches = 0;
  for (int64_t k = 0; k < src.numel(); ++k) {
    const float f = src.as<float>()[k];
    const uint16_t ours = f32_to_f16(f), theirs = dst.as<uint16_t>()[k];
    const bool ok = std::isnan(f) ? std::isnan(f16_to_f32(ours)) && std::isnan(f16_to_f32(theirs))
                                  : ours == theirs;
    if (!ok && ++mismatches <= 5)
      ADD_FAILURE() << "f32_to_f16(bits " << std::hex << f32_bits(f) << ") = " << ours
                    << ", numpy gives " << theirs;
  }
  EXPECT_EQ(mismatches, 0);
}

}  // namespace
}  // namespace mla
