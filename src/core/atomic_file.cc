#include "core/atomic_file.h"

#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "mla/status.h"

namespace mla {

void write_file_atomic(const std::string& path, const std::vector<ByteRange>& parts) {
  static std::atomic<uint64_t> counter{0};
  const std::string tmp =
      path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter.fetch_add(1));
  struct RemoveOnFail {
    const std::string& name;
    bool armed = true;
    ~RemoveOnFail() {
      if (armed) std::remove(name.c_str());
    }
  } guard{tmp};

  errno = 0;
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) {
    guard.armed = false;  // nothing was created
    MLA_FAIL(path << ": cannot create temporary file " << tmp << ": " << std::strerror(errno));
  }
  bool ok = true;
  for (const ByteRange& r : parts)
    ok = ok && (r.size == 0 || std::fwrite(r.data, 1, r.size, f) == r.size);
  const int write_errno = errno;
  ok = (std::fclose(f) == 0) && ok;
  MLA_CHECK(ok, path << ": write failed: " << std::strerror(write_errno ? write_errno : errno));
  MLA_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0,
            path << ": cannot rename " << tmp << " into place: " << std::strerror(errno));
  guard.armed = false;
}

void write_file_atomic(const std::string& path, const std::string& text) {
  write_file_atomic(path, {{text.data(), text.size()}});
}

}  // namespace mla
