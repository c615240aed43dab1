// safetensors reading (mmap) and writing, and model directories with a shard index. The header is
// parsed with nlohmann-json and checked completely when a file is opened, so a malformed file is
// refused before any tensor of it is used.
#include "mla/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/atomic_file.h"
#include "mla/status.h"

namespace mla {

namespace fs = std::filesystem;
using json = nlohmann::json;

const char* st_dtype_name(StDType t) {
  switch (t) {
    case StDType::bf16: return "BF16";
    case StDType::f16: return "F16";
    case StDType::f32: return "F32";
    case StDType::f8_e4m3: return "F8_E4M3";
    default: return "other";
  }
}

size_t st_dtype_size(StDType t) {
  switch (t) {
    case StDType::bf16:
    case StDType::f16: return 2;
    case StDType::f32: return 4;
    case StDType::f8_e4m3: return 1;
    default: return 0;
  }
}

namespace {

StDType parse_st_dtype(const std::string& s) {
  if (s == "BF16") return StDType::bf16;
  if (s == "F16") return StDType::f16;
  if (s == "F32") return StDType::f32;
  if (s == "F8_E4M3") return StDType::f8_e4m3;
  return StDType::other;
}

// Sizes of the other dtypes the format defines, so their entries are checked as strictly.
size_t other_dtype_size(const std::string& s) {
  if (s == "F64" || s == "I64" || s == "U64") return 8;
  if (s == "I32" || s == "U32") return 4;
  if (s == "I16" || s == "U16") return 2;
  if (s == "I8" || s == "U8" || s == "BOOL" || s == "F8_E5M2") return 1;
  return 0;
}

// A header larger than this is not a tensor index (the format's own reader caps it at 100 MB).
constexpr uint64_t kMaxHeader = uint64_t(100) << 20;

}  // namespace

int64_t StTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string StTensor::shape_str() const {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << "]";
  return os.str();
}

class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path) : path_(path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    MLA_CHECK(fd >= 0, path << ": cannot open (" << std::strerror(errno) << ")");
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      ::close(fd);
      MLA_FAIL(path << ": cannot stat");
    }
    size_ = size_t(st.st_size);
    if (size_ > 0) {
      map_ = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (map_ == MAP_FAILED) {
        map_ = nullptr;
        ::close(fd);
        MLA_FAIL(path << ": cannot memory-map (" << std::strerror(errno) << ")");
      }
    }
    ::close(fd);
    parse();
  }
  ~SafetensorsFile() {
    if (map_) ::munmap(map_, size_);
  }
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  bool has(const std::string& name) const { return entries_.count(name) != 0; }
  StTensor get(const std::string& name) const {
    auto it = entries_.find(name);
    MLA_CHECK(it != entries_.end(), path_ << ": no tensor " << name);
    return it->second;
  }
  std::vector<std::string> names() const {
    std::vector<std::string> n;
    for (auto& [k, v] : entries_) n.push_back(k);
    return n;
  }

 private:
  void parse() {
    MLA_CHECK(size_ >= 8, path_ << ": " << size_ << " bytes is too short for a safetensors file "
                                << "(the 8-byte header length is missing)");
    const auto* base = static_cast<const unsigned char*>(map_);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; --i) hlen = (hlen << 8) | base[i];
    MLA_CHECK(hlen <= kMaxHeader && hlen <= size_ - 8,
              path_ << ": header length " << hlen << " exceeds the file (" << size_
                    << " bytes) or the 100 MB limit");
    json h;
    try {
      h = json::parse(base + 8, base + 8 + hlen);
    } catch (const json::exception& e) {
      MLA_FAIL(path_ << ": header is not valid JSON: " << e.what());
    }
    MLA_CHECK(h.is_object(), path_ << ": header is not a JSON object");
    const uint64_t data_size = size_ - 8 - hlen;
    const unsigned char* data = base + 8 + hlen;
    struct Range {
      uint64_t b, e;
      std::string name;
    };
    std::vector<Range> ranges;
    for (auto& item : h.items()) {
      // Not a structured binding: clang 14 (the fuzz build) cannot capture one in the lambda.
      const std::string& name = item.key();
      auto& v = item.value();
      if (name == "__metadata__") continue;
      auto bad = [&](const std::string& what) {
        MLA_FAIL(path_ << ": tensor " << name << ": " << what);
      };
      if (!v.is_object()) bad("entry is not an object");
      if (!v.contains("dtype") || !v["dtype"].is_string()) bad("missing or non-string dtype");
      if (!v.contains("shape") || !v["shape"].is_array()) bad("missing or non-array shape");
      if (!v.contains("data_offsets") || !v["data_offsets"].is_array() ||
          v["data_offsets"].size() != 2)
        bad("data_offsets is not a pair [begin, end]");
      StTensor t;
      t.name = name;
      t.file = path_;
      t.dtype_str = v["dtype"].get<std::string>();
      t.dtype = parse_st_dtype(t.dtype_str);
      uint64_t numel = 1;
      for (auto& d : v["shape"]) {
        if (!d.is_number_unsigned()) bad("shape " + v["shape"].dump() + " has a non-integer or negative extent");
        const uint64_t x = d.get<uint64_t>();
        if (x > (uint64_t(1) << 40)) bad("shape " + v["shape"].dump() + " is implausibly large");
        numel *= x;
        if (numel > (uint64_t(1) << 42)) bad("shape " + v["shape"].dump() + " is implausibly large");
        t.shape.push_back(int64_t(x));
      }
      auto& off = v["data_offsets"];
      if (!off[0].is_number_unsigned() || !off[1].is_number_unsigned())
        bad("data_offsets " + off.dump() + " are not non-negative integers");
      const uint64_t b = off[0].get<uint64_t>(), e = off[1].get<uint64_t>();
      if (b > e) bad("data_offsets " + off.dump() + ": begin is after end");
      if (e > data_size)
        bad("data_offsets " + off.dump() + " reach beyond the data (" + std::to_string(data_size) +
            " bytes): the file is truncated or the offsets are wrong");
      const size_t es = t.dtype == StDType::other ? other_dtype_size(t.dtype_str) : st_dtype_size(t.dtype);
      if (es == 0) bad("unknown dtype " + t.dtype_str);
      if (e - b != numel * es)
        bad("holds " + std::to_string(e - b) + " bytes but dtype " + t.dtype_str + " x shape " +
            v["shape"].dump() + " needs " + std::to_string(numel * es));
      t.data = data + b;
      ranges.push_back({b, e, name});
      entries_.emplace(name, std::move(t));
    }
    std::sort(ranges.begin(), ranges.end(), [](const Range& x, const Range& y) { return x.b < y.b; });
    for (size_t i = 1; i < ranges.size(); ++i)
      MLA_CHECK(ranges[i].b >= ranges[i - 1].e,
                path_ << ": tensors " << ranges[i - 1].name << " [" << ranges[i - 1].b << ", "
                      << ranges[i - 1].e << ") and " << ranges[i].name << " [" << ranges[i].b
                      << ", " << ranges[i].e << ") overlap");
  }

  std::string path_;
  void* map_ = nullptr;
  size_t size_ = 0;
  std::map<std::string, StTensor> entries_;
};

struct TensorStore::State {
  std::string where;
  fs::path dir;
  std::string index_path;                         // empty: no index
  std::map<std::string, std::string> weight_map;  // tensor -> shard file name (index)
  std::string single_file;                        // no index: the one file
  mutable std::mutex mu;
  mutable std::map<std::string, std::shared_ptr<SafetensorsFile>> files;  // opened files by path
  std::map<std::string, StTensor> memory;
  std::vector<std::shared_ptr<std::vector<unsigned char>>> buffers;

  std::shared_ptr<SafetensorsFile> file(const std::string& path) const {
    std::lock_guard<std::mutex> lk(mu);
    auto it = files.find(path);
    if (it != files.end()) return it->second;
    auto f = std::make_shared<SafetensorsFile>(path);
    files.emplace(path, f);
    return f;
  }
};

TensorStore::TensorStore() : s_(std::make_shared<State>()) { s_->where = "<memory>"; }
TensorStore::~TensorStore() = default;
TensorStore::TensorStore(const TensorStore&) = default;
TensorStore& TensorStore::operator=(const TensorStore&) = default;

TensorStore TensorStore::open_dir(const std::string& dir) {
  MLA_CHECK(fs::is_directory(dir), "--model " << dir << " is not a directory");
  TensorStore ts;
  ts.s_->where = dir;
  ts.s_->dir = dir;
  const fs::path index = fs::path(dir) / "model.safetensors.index.json";
  const fs::path single = fs::path(dir) / "model.safetensors";
  if (fs::exists(index)) {
    ts.s_->index_path = index.string();
    std::ifstream in(index);
    MLA_CHECK(in, index.string() << ": cannot open");
    json j;
    try {
      j = json::parse(in);
    } catch (const json::exception& e) {
      MLA_FAIL(index.string() << ": not valid JSON: " << e.what());
    }
    MLA_CHECK(j.is_object() && j.contains("weight_map") && j["weight_map"].is_object(),
              index.string() << ": no \"weight_map\" object");
    for (auto& [name, file] : j["weight_map"].items()) {
      MLA_CHECK(file.is_string(), index.string() << ": weight_map[\"" << name << "\"] is not a file name");
      const std::string f = file.get<std::string>();
      MLA_CHECK(!f.empty() && f.find('/') == std::string::npos && f != "." && f != "..",
                index.string() << ": weight_map[\"" << name << "\"] = \"" << f
                               << "\" is not a file name in the model directory");
      ts.s_->weight_map.emplace(name, f);
    }
  } else {
    MLA_CHECK(fs::exists(single), dir << ": neither model.safetensors.index.json nor "
                                         "model.safetensors is there");
    ts.s_->single_file = single.string();
  }
  return ts;
}

TensorStore TensorStore::open_file(const std::string& path) {
  TensorStore ts;
  ts.s_->where = path;
  ts.s_->single_file = path;
  ts.s_->file(path);  // checks the header now
  return ts;
}

void TensorStore::add(const std::string& name, StDType dtype, const std::vector<int64_t>& shape,
                      std::vector<unsigned char> bytes) {
  StTensor t;
  t.name = name;
  t.file = "<memory>";
  t.dtype = dtype;
  t.dtype_str = st_dtype_name(dtype);
  t.shape = shape;
  MLA_CHECK(size_t(t.numel()) * st_dtype_size(dtype) == bytes.size(),
            "tensor " << name << ": " << bytes.size() << " bytes for shape " << t.shape_str());
  auto buf = std::make_shared<std::vector<unsigned char>>(std::move(bytes));
  t.data = buf->data();
  s_->buffers.push_back(buf);
  s_->memory[name] = t;
}

bool TensorStore::has(const std::string& name) const {
  if (s_->memory.count(name)) return true;
  if (!s_->index_path.empty()) return s_->weight_map.count(name) != 0;
  if (!s_->single_file.empty()) return s_->file(s_->single_file)->has(name);
  return false;
}

StTensor TensorStore::get(const std::string& name) const {
  if (auto it = s_->memory.find(name); it != s_->memory.end()) return it->second;
  if (!s_->index_path.empty()) {
    auto it = s_->weight_map.find(name);
    MLA_CHECK(it != s_->weight_map.end(), s_->index_path << ": no tensor " << name << " in weight_map");
    const fs::path shard = s_->dir / it->second;
    MLA_CHECK(fs::exists(shard), s_->index_path << ": tensor " << name << " is in shard "
                                                << it->second << ", which does not exist");
    auto f = s_->file(shard.string());
    MLA_CHECK(f->has(name), shard.string() << ": no tensor " << name << " (the index says it is here)");
    return f->get(name);
  }
  MLA_CHECK(!s_->single_file.empty(), "no tensor " << name << " in memory");
  return s_->file(s_->single_file)->get(name);
}

StTensor TensorStore::get(const std::string& name, const std::vector<int64_t>& shape,
                            const std::vector<StDType>& dtypes) const {
  StTensor t = get(name);
  MLA_CHECK(t.shape == shape, t.file << ": tensor " << name << " has shape " << t.shape_str()
                                     << ", expected " << StTensor{.shape = shape}.shape_str());
  bool ok = false;
  std::string allowed;
  for (StDType d : dtypes) {
    ok |= d == t.dtype;
    allowed += std::string(allowed.empty() ? "" : ", ") + st_dtype_name(d);
  }
  MLA_CHECK(ok, t.file << ": tensor " << name << " has dtype " << t.dtype_str << ", expected one of "
                       << allowed);
  return t;
}

std::string TensorStore::where() const { return s_->where; }

void write_safetensors(const std::string& path, const std::vector<StTensorData>& tensors) {
  json h = json::object();
  uint64_t off = 0;
  for (const auto& t : tensors) {
    uint64_t n = 1;
    for (int64_t d : t.shape) n *= uint64_t(d);
    const uint64_t bytes = n * st_dtype_size(t.dtype);
    MLA_CHECK(st_dtype_size(t.dtype) > 0, path << ": tensor " << t.name << " has no writable dtype");
    h[t.name] = {{"dtype", st_dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {off, off + bytes}}};
    off += bytes;
  }
  std::string hs = h.dump();
  while ((hs.size() + 8) % 8) hs.push_back(' ');  // the format pads the header to 8 bytes
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = (uint64_t(hs.size()) >> (8 * i)) & 0xff;
  std::vector<ByteRange> parts{{len, 8}, {hs.data(), hs.size()}};
  for (const auto& t : tensors) {
    uint64_t n = 1;
    for (int64_t d : t.shape) n *= uint64_t(d);
    parts.push_back({t.data, size_t(n * st_dtype_size(t.dtype))});
  }
  write_file_atomic(path, parts);
}

}  // namespace mla
