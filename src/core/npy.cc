// NumPy .npy reading and writing. The header is a Python dict literal; a small parser here reads
// the subset numpy writes (strings, True/False, tuples of ints) in any key order and spacing, so
// files from any numpy version, or written by hand, load. Every refusal names the file.
//
//   file = "\x93NUMPY" major minor header_len header data
//     header_len: uint16 LE (version 1.0) or uint32 LE (2.0, 3.0; 3.0 has a utf8 header)
//     header:     "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }" + ' '... + '\n'
//     data:       numel * itemsize bytes, C order, nothing after it
#include "mla/npy.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <utility>

#include "core/atomic_file.h"
#include "mla/status.h"

namespace mla {

namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicLen = 6;
// numpy aligns the start of the data to 64 bytes (its ARRAY_ALIGN), so memory-mapped arrays are
// aligned for any SIMD load; we do the same.
constexpr size_t kAlign = 64;
// Reads grow the buffer by at most this much at a time, so a header or shape that claims more
// bytes than the file holds costs at most one chunk of memory before the truncation is found.
constexpr size_t kReadChunk = size_t(64) << 20;

// numpy's name for each type, used in messages; bf16 travels as uint16 (numpy has no bfloat16).
const char* numpy_name(DType t) {
  switch (t) {
    case DType::f32:
      return "float32";
    case DType::f16:
      return "float16";
    case DType::bf16:
      return "bfloat16 (stored as uint16)";
    case DType::i8:
      return "int8";
    case DType::i32:
      return "int32";
    case DType::u16:
      return "uint16";
  }
  return "?";
}

const char* descr_for(DType t) {
  switch (t) {
    case DType::f32:
      return "<f4";
    case DType::f16:
      return "<f2";
    case DType::bf16:
      return "<u2";
    case DType::i8:
      return "|i1";
    case DType::i32:
      return "<i4";
    case DType::u16:
      return "<u2";
  }
  return nullptr;
}

// "[2, 3, 576]"; a shape of more than 16 dimensions is shortened to its first 8 and last 2 (a
// 20-million-dimension header made a 60 MB message).
std::string shape_to_str(const std::vector<int64_t>& shape, bool star_for_negative = false) {
  std::string s = "[";
  const size_t n = shape.size();
  for (size_t i = 0; i < n; ++i) {
    if (n > 16 && i == 8) {
      s += ", ... (" + std::to_string(n) + " dimensions) ...";
      i = n - 3;
      continue;
    }
    if (i) s += ", ";
    s += (star_for_negative && shape[i] < 0) ? "*" : std::to_string(shape[i]);
  }
  return s + "]";
}

// numel * itemsize, or nullopt when a dimension is negative or the product overflows.
std::optional<uint64_t> byte_count(const std::vector<int64_t>& shape, size_t itemsize) {
  uint64_t n = itemsize;
  bool zero = false;
  for (int64_t d : shape) {
    if (d < 0) return std::nullopt;
    if (d == 0) zero = true;
  }
  if (zero) return 0;
  for (int64_t d : shape) {
    if (uint64_t(d) > uint64_t(std::numeric_limits<int64_t>::max()) / n) return std::nullopt;
    n *= uint64_t(d);
  }
  return n;
}

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};
using File = std::unique_ptr<std::FILE, FileCloser>;

// Appends up to n bytes to buf; returns how many were read (fewer only at end of file).
uint64_t read_up_to(std::FILE* f, std::vector<unsigned char>& buf, uint64_t n,
                    const std::string& path) {
  uint64_t got = 0;
  while (got < n) {
    const size_t want = size_t(std::min<uint64_t>(n - got, kReadChunk));
    const size_t old = buf.size();
    buf.resize(old + want);
    const size_t r = std::fread(buf.data() + old, 1, want, f);
    buf.resize(old + r);
    got += r;
    if (r < want) {
      MLA_CHECK(!std::ferror(f), path << ": read error: " << std::strerror(errno));
      break;
    }
  }
  return got;
}

// ---- header dict parser ------------------------------------------------------------------------

struct Header {
  std::optional<std::string> descr;
  std::optional<bool> fortran_order;
  std::optional<std::vector<int64_t>> shape;
};

class HeaderParser {
 public:
  HeaderParser(const std::string& path, const std::string& text) : path_(path), s_(text) {}

  Header parse() {
    Header h;
    skip_ws();
    expect('{');
    skip_ws();
    while (peek() != '}') {
      const std::string key = parse_string();
      skip_ws();
      expect(':');
      skip_ws();
      if (key == "descr") {
        if (peek() != '\'' && peek() != '"')
          fail("'descr' is not a simple type string (structured arrays are not supported)");
        set(h.descr, parse_string(), key);
      } else if (key == "fortran_order") {
        set(h.fortran_order, parse_bool(), key);
      } else if (key == "shape") {
        set(h.shape, parse_shape(), key);
      } else {
        fail("unexpected key '" + key + "'");
      }
      skip_ws();
      if (peek() == ',') {
        ++pos_;
        skip_ws();
      } else if (peek() != '}') {
        fail("expected ',' or '}'");
      }
    }
    ++pos_;
    skip_ws();
    if (pos_ != s_.size()) fail("unexpected text after '}'");
    if (!h.descr) fail("no 'descr' key");
    if (!h.fortran_order) fail("no 'fortran_order' key");
    if (!h.shape) fail("no 'shape' key");
    return h;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    // Quote the header (shortened) so the reader sees what was wrong without a hex dump.
    std::string shown = s_.size() > 200 ? s_.substr(0, 200) + "..." : s_;
    while (!shown.empty() && (shown.back() == '\n' || shown.back() == ' ')) shown.pop_back();
    MLA_FAIL(path_ << ": malformed header: " << what << " at offset " << pos_ << " in \"" << shown
                   << "\"");
  }
  template <class T, class V>
  void set(std::optional<T>& slot, V&& v, const std::string& key) {
    if (slot) fail("duplicate key '" + key + "'");
    slot = std::forward<V>(v);
  }
  char peek() const { return pos_ < s_.size() ? s_[pos_] : '\0'; }
  void skip_ws() {
    while (pos_ < s_.size() &&
           (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r'))
      ++pos_;
  }
  void expect(char c) {
    if (peek() != c) fail(std::string("expected '") + c + "'");
    ++pos_;
  }
  std::string parse_string() {
    const char q = peek();
    if (q != '\'' && q != '"') fail("expected a quoted string");
    ++pos_;
    std::string out;
    while (pos_ < s_.size() && s_[pos_] != q) {
      if (s_[pos_] == '\\' && pos_ + 1 < s_.size()) ++pos_;
      out += s_[pos_++];
    }
    if (pos_ >= s_.size()) fail("unterminated string");
    ++pos_;
    return out;
  }
  bool parse_bool() {
    if (s_.compare(pos_, 4, "True") == 0) {
      pos_ += 4;
      return true;
    }
    if (s_.compare(pos_, 5, "False") == 0) {
      pos_ += 5;
      return false;
    }
    fail("expected True or False");
  }
  int64_t parse_int() {
    const size_t start = pos_;
    bool neg = false;
    if (peek() == '-' || peek() == '+') neg = s_[pos_++] == '-';
    if (!(peek() >= '0' && peek() <= '9')) fail("expected an integer");
    uint64_t v = 0;
    bool huge = false;
    while (peek() >= '0' && peek() <= '9') {
      const unsigned d = unsigned(s_[pos_++] - '0');
      if (v > (uint64_t(std::numeric_limits<int64_t>::max()) - d) / 10) huge = true;
      if (!huge) v = v * 10 + d;
    }
    if (peek() == 'L' || peek() == 'l') ++pos_;  // Python 2 longs, from old numpy
    if (huge)
      MLA_FAIL(path_ << ": dimension " << s_.substr(start, pos_ - start)
                     << " in shape is too large");
    return neg ? -int64_t(v) : int64_t(v);
  }
  // "()", "(3,)", "(2, 3)", "(2,3,)"; a bare "3" (not a tuple in Python) is taken as (3,).
  std::vector<int64_t> parse_shape() {
    std::vector<int64_t> dims;
    if (peek() != '(') {
      dims.push_back(parse_int());
      return dims;
    }
    ++pos_;
    skip_ws();
    while (peek() != ')') {
      dims.push_back(parse_int());
      skip_ws();
      if (peek() == ',') {
        ++pos_;
        skip_ws();
      } else if (peek() != ')') {
        fail("expected ',' or ')' in shape");
      }
    }
    ++pos_;
    return dims;
  }

  const std::string& path_;
  const std::string& s_;
  size_t pos_ = 0;
};

// numpy names of the dtypes we refuse, for a friendlier message.
std::string describe_descr(const std::string& d) {
  static const char* const kKnown[][2] = {
      {"f8", "float64"},   {"f16", "float128"},   {"i2", "int16"},  {"i8", "int64"},
      {"u1", "uint8"},     {"u4", "uint32"},      {"u8", "uint64"}, {"b1", "bool"},
      {"c8", "complex64"}, {"c16", "complex128"}, {"O", "object"}};
  const std::string code = d.empty() ? d : d.substr(1);
  for (const auto& k : kKnown)
    if (code == k[0]) return "'" + d + "' (" + k[1] + ")";
  return "'" + d + "'";
}

DType dtype_from_descr(const std::string& path, const std::string& d) {
  static const struct {
    const char* code;
    DType type;
  } kTypes[] = {{"f4", DType::f32},
                {"f2", DType::f16},
                {"i1", DType::i8},
                {"i4", DType::i32},
                {"u2", DType::u16}};
  if (d.size() >= 2) {
    const char order = d[0];
    const std::string code = d.substr(1);
    const bool one_byte = code == "i1" || code == "u1" || code == "b1";
    if (order == '>' && !one_byte)
      MLA_FAIL(path << ": big-endian data is not supported (descr '" << d << "')");
    if (order == '<' || order == '|' || order == '=') {
      for (const auto& t : kTypes)
        if (code == t.code && (order != '|' || code == "i1")) return t.type;
    } else if (order == '>' && code == "i1") {
      return DType::i8;
    }
  }
  MLA_FAIL(path << ": unsupported dtype " << describe_descr(d)
                << "; supported: '<f4' (float32), '<f2' (float16), '|i1' (int8), '<i4' (int32), "
                   "'<u2' (uint16)");
}

std::string header_text(DType dtype, const std::vector<int64_t>& shape) {
  std::string s = "{'descr': '";
  s += descr_for(dtype);
  s += "', 'fortran_order': False, 'shape': (";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  if (shape.size() == 1) s += ",";
  s += "), }";
  return s;
}

}  // namespace

// An accepted array's byte count fits int64 unless a dimension is 0, and then so does the
// product up to it: (2^62, 4, 0) is empty, not an overflow.
int64_t NpyArray::numel() const {
  for (int64_t d : shape)
    if (d == 0) return 0;
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string NpyArray::shape_str() const { return shape_to_str(shape); }

NpyArray read_npy(const std::string& path) {
  errno = 0;
  File f(std::fopen(path.c_str(), "rb"));
  MLA_CHECK(f, path << ": cannot open: " << std::strerror(errno));

  std::vector<unsigned char> buf;
  uint64_t got = read_up_to(f.get(), buf, kMagicLen + 2, path);
  MLA_CHECK(got >= kMagicLen && std::memcmp(buf.data(), kMagic, kMagicLen) == 0,
            path << ": not a .npy file (bad magic: it does not start with \\x93NUMPY)");
  MLA_CHECK(got == kMagicLen + 2, path << ": header truncated: file ends inside the version bytes");
  const int major = buf[6], minor = buf[7];
  MLA_CHECK((major == 1 || major == 2 || major == 3) && minor == 0,
            path << ": unsupported .npy format version " << major << "." << minor
                 << " (supported: 1.0, 2.0, 3.0)");

  const size_t len_bytes = major == 1 ? 2 : 4;
  buf.clear();
  got = read_up_to(f.get(), buf, len_bytes, path);
  MLA_CHECK(got == len_bytes, path << ": header truncated: file ends inside the header length");
  uint64_t header_len = 0;
  for (size_t i = 0; i < len_bytes; ++i) header_len |= uint64_t(buf[i]) << (8 * i);

  buf.clear();
  got = read_up_to(f.get(), buf, header_len, path);
  MLA_CHECK(got == header_len, path << ": header truncated: header length is " << header_len
                                    << " bytes, but the file holds only " << got << " after it");
  const std::string text(buf.begin(), buf.end());
  const Header h = HeaderParser(path, text).parse();

  NpyArray a;
  a.dtype = dtype_from_descr(path, *h.descr);
  MLA_CHECK(!*h.fortran_order,
            path << ": Fortran-order arrays are not supported (fortran_order is True)");
  a.shape = *h.shape;
  for (size_t i = 0; i < a.shape.size(); ++i)
    MLA_CHECK(a.shape[i] >= 0,
              path << ": dimension " << i << " of shape " << a.shape_str() << " is negative");
  const std::optional<uint64_t> need = byte_count(a.shape, dtype_size(a.dtype));
  MLA_CHECK(need,
            path << ": shape " << a.shape_str() << " is too large (its byte count overflows)");

  // Reserve up front when the file really holds the data, so a large array is read without
  // regrowing; a shape that claims more than the file holds is caught chunk by chunk instead.
  struct stat st;
  const long pos = std::ftell(f.get());
  if (fstat(fileno(f.get()), &st) == 0 && S_ISREG(st.st_mode) && pos >= 0 &&
      *need <= uint64_t(st.st_size) - uint64_t(pos))
    a.bytes.reserve(size_t(*need));
  got = read_up_to(f.get(), a.bytes, *need, path);
  MLA_CHECK(got == *need,
            path << ": truncated: expected " << *need << " bytes of data, found " << got);
  std::vector<unsigned char> extra;
  uint64_t extra_n = 0;
  constexpr uint64_t kTailChunk = 1 << 16;
  while (true) {
    extra.clear();
    const uint64_t r = read_up_to(f.get(), extra, kTailChunk, path);
    extra_n += r;
    if (r < kTailChunk) break;
  }
  MLA_CHECK(extra_n == 0, path << ": has " << extra_n << " bytes after the data (shape "
                               << a.shape_str() << " of " << numpy_name(a.dtype) << " needs "
                               << *need << ")");
  return a;
}

NpyArray read_npy(const std::string& path, DType want_dtype,
                  const std::vector<int64_t>& want_shape) {
  NpyArray a = read_npy(path);
  // numpy has no bfloat16: a bf16 array is stored as its uint16 bits.
  if (want_dtype == DType::bf16 && a.dtype == DType::u16) a.dtype = DType::bf16;
  MLA_CHECK(a.dtype == want_dtype, path << ": dtype is " << numpy_name(a.dtype) << ", expected "
                                        << numpy_name(want_dtype));
  MLA_CHECK(a.shape.size() == want_shape.size(),
            path << ": shape is " << a.shape_str() << ", expected "
                 << shape_to_str(want_shape, true) << " (rank " << a.shape.size()
                 << ", expected rank " << want_shape.size() << ")");
  for (size_t i = 0; i < want_shape.size(); ++i)
    MLA_CHECK(want_shape[i] < 0 || want_shape[i] == a.shape[i],
              path << ": shape is " << a.shape_str() << ", expected "
                   << shape_to_str(want_shape, true) << " (dimension " << i << " is " << a.shape[i]
                   << ", expected " << want_shape[i] << ")");
  return a;
}

void write_npy(const std::string& path, DType dtype, const std::vector<int64_t>& shape,
               const void* data) {
  MLA_CHECK(descr_for(dtype), path << ": cannot write: invalid dtype value " << int(dtype));
  for (size_t i = 0; i < shape.size(); ++i)
    MLA_CHECK(shape[i] >= 0, path << ": cannot write: dimension " << i << " of shape "
                                  << shape_to_str(shape) << " is negative");
  const std::optional<uint64_t> nbytes = byte_count(shape, dtype_size(dtype));
  MLA_CHECK(nbytes, path << ": cannot write: shape " << shape_to_str(shape) << " is too large");
  MLA_CHECK(data || *nbytes == 0, path << ": cannot write: data is null");

  // Pad with spaces and a final '\n' so magic + version + length + header is a multiple of 64.
  std::string header = header_text(dtype, shape);
  int major = 1;
  size_t prefix = kMagicLen + 2 + 2;
  size_t total = (prefix + header.size() + 1 + kAlign - 1) / kAlign * kAlign;
  if (total - prefix > 0xffff) {
    major = 2;
    prefix = kMagicLen + 2 + 4;
    total = (prefix + header.size() + 1 + kAlign - 1) / kAlign * kAlign;
  }
  header.append(total - prefix - header.size() - 1, ' ');
  header += '\n';

  std::string out(kMagic, kMagicLen);
  out += char(major);
  out += char(0);
  const uint64_t hlen = header.size();
  for (size_t i = 0; i < prefix - kMagicLen - 2; ++i) out += char((hlen >> (8 * i)) & 0xff);
  out += header;

  write_file_atomic(path, {{out.data(), out.size()}, {data, size_t(*nbytes)}});
}

}  // namespace mla
