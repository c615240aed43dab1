// The all-or-nothing output set of `mla decode` and `mla layer` (commands.h's write_outputs):
// apart from decode.cc because it is its own concern (atomic swaps, crash hooks, stale siblings).
#include <signal.h>
#include <stdio.h>
#include <unistd.h>
#include <fcntl.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <string>

#include "mla/commands.h"
#include "mla/npy.h"
#include "mla/status.h"

namespace mla::tool {

namespace fs = std::filesystem;

namespace {

// All or nothing, also across a kill (DESIGN: never a mix of two runs' files). --out DIR holds
// exactly the output files of one run. A run writes its set into a fresh sibling directory,
// .DIR.mla-new-<pid>, then swaps it with DIR in one step (renameat2 RENAME_EXCHANGE; a plain
// rename when DIR does not exist yet) and removes the old set, now at the sibling's name. A kill
// before the swap leaves the old set in DIR and a stale sibling; a kill after it, the new set in
// DIR and the old one in the sibling. Each run first removes the stale siblings of dead runs.
// Where the file system cannot exchange (EINVAL), the old set is renamed aside to
// .DIR.mla-old-<pid> first and put back by the next run if the kill came between the two renames.
// Because DIR is replaced as a whole, a DIR holding anything else than the outputs of mla's
// commands (decode's, layer's) is refused.
const char* const kOutputNames[] = {"o.npy", "lse.npy", "q_used.npy", "kv_used.npy"};

// Test hooks: MLA_TEST_CRASH_AT=<point> dies there as kill -9 would, MLA_TEST_FAIL_AT=<point>
// fails there as a full disk would, so the tests can check what such a run leaves behind.
void crash_point(const std::string& point) {
  const char* at = std::getenv("MLA_TEST_CRASH_AT");
  if (at && point == at) ::_exit(137);
  const char* fail = std::getenv("MLA_TEST_FAIL_AT");
  if (fail && point == fail) throw std::runtime_error("injected failure at " + point);
}

// .DIR.mla-<kind>-<pid> beside DIR.
fs::path sibling(const fs::path& dir, const char* kind, long pid) {
  return dir.parent_path() / ("." + dir.filename().string() + ".mla-" + kind + "-" + std::to_string(pid));
}

// Removes what killed runs left beside dir; restores an old set renamed aside if dir is missing.
void clean_stale_siblings(const fs::path& dir) {
  std::error_code ec;
  const std::string prefix = "." + dir.filename().string() + ".mla-";
  for (const auto& e : fs::directory_iterator(dir.parent_path(), ec)) {
    const std::string name = e.path().filename().string();
    if (name.rfind(prefix, 0) != 0) continue;
    const std::string rest = name.substr(prefix.size());  // new-<pid> | old-<pid>
    const size_t dash = rest.find('-');
    if (dash == std::string::npos) continue;
    const long pid = std::strtol(rest.c_str() + dash + 1, nullptr, 10);
    if (pid <= 0 || (pid != ::getpid() && ::kill(pid_t(pid), 0) == 0)) continue;  // a live run's
    if (rest.compare(0, dash, "old") == 0 && !fs::exists(dir, ec))
      fs::rename(e.path(), dir, ec);
    else
      fs::remove_all(e.path(), ec);
  }
}

// Refuses an --out that is not a directory of mla outputs (before any work is done).
void check_out_dir_with(const fs::path& dir, const std::vector<OutFile>& files) {
  std::error_code ec;
  if (!fs::exists(fs::symlink_status(dir, ec))) return;
  MLA_CHECK(fs::is_directory(fs::symlink_status(dir, ec)),
            "--out " << dir.string() << " is not a directory");
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    bool ours = false;
    for (const char* n : kOutputNames) ours |= name == n;
    for (const OutFile& f : files) ours |= name == f.name;
    MLA_CHECK(ours, "--out " << dir.string() << " holds " << name
                             << ", which is not an mla output; the directory is replaced as a "
                                "whole, so give an empty or new one");
    MLA_CHECK(fs::is_regular_file(fs::symlink_status(e.path(), ec)),
              e.path().string() << " is not a regular file");
  }
}

}  // namespace

void check_out_dir(const std::filesystem::path& dir) { check_out_dir_with(dir, {}); }

// All or nothing, also across a kill: see the helpers above (the previous run's files survive any
// failure; a killed run leaves the old set or the new one, never a mix).
void write_outputs(const std::string& out, const std::vector<OutFile>& files) {
  const fs::path dir = fs::absolute(fs::path(out)).lexically_normal();
  const fs::path stage = sibling(dir, "new", ::getpid()), aside = sibling(dir, "old", ::getpid());
  std::error_code ec;
  try {
    fs::create_directories(dir.parent_path());
    clean_stale_siblings(dir);
    check_out_dir_with(dir, files);
    fs::remove_all(stage);
    fs::create_directory(stage);
    for (size_t i = 0; i < files.size(); ++i) {
      write_npy((stage / files[i].name).string(), DType::f32, files[i].shape, files[i].data);
      crash_point("file" + std::to_string(i));
    }
    crash_point("swap");
    if (!fs::exists(dir)) {
      fs::rename(stage, dir);
    } else if (::renameat2(AT_FDCWD, stage.c_str(), AT_FDCWD, dir.c_str(), RENAME_EXCHANGE) == 0) {
      crash_point("swapped");
      fs::remove_all(stage, ec);  // the old set
    } else {
      MLA_CHECK(errno == EINVAL, "replacing " << dir.string() << ": " << std::strerror(errno));
      fs::rename(dir, aside);
      crash_point("aside");
      fs::rename(stage, dir);
      fs::remove_all(aside, ec);
    }
  } catch (const std::exception& e) {
    fs::remove_all(stage, ec);
    if (!fs::exists(dir, ec) && fs::exists(aside, ec)) fs::rename(aside, dir, ec);
    MLA_FAIL("writing the outputs to " << out << " failed, nothing written (the previous outputs, "
                                          "if any, are unchanged): "
                                       << e.what());
  }
}

}  // namespace mla::tool
