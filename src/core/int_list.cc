#include "core/int_list.h"

#include <cstddef>
#include <exception>
#include <sstream>
#include <string>
#include <vector>

#include "mla/status.h"

namespace mla {

namespace {

// The whole of `s` as an integer in [lo, hi]; false for anything else.
bool parse_int(const std::string& s, int lo, int hi, int* out) {
  size_t used = 0;
  long v = 0;
  try {
    v = std::stol(s, &used);
  } catch (const std::exception&) {
    return false;
  }
  if (used == 0 || used != s.size() || v < lo || v > hi) return false;
  *out = int(v);
  return true;
}

}  // namespace

std::vector<int> parse_int_list(const std::string& text, const std::string& what, int lo, int hi,
                                bool ranges) {
  std::vector<int> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    // A leading '-' is a sign, not a range.
    const size_t dash = ranges ? item.find('-', 1) : std::string::npos;
    int a = 0, b = 0;
    const bool ok = dash == std::string::npos
                        ? parse_int(item, lo, hi, &a) && (b = a, true)
                        : parse_int(item.substr(0, dash), lo, hi, &a) &&
                              parse_int(item.substr(dash + 1), lo, hi, &b);
    MLA_CHECK(ok, what << " '" << text << "': '" << item << "' is not an integer in " << lo << ".."
                       << hi << (ranges ? " or a range of them" : ""));
    MLA_CHECK(a <= b, what << " '" << text << "': the range '" << item << "' runs backwards");
    for (int v = a; v <= b; ++v) out.push_back(v);
  }
  MLA_CHECK(!out.empty(), what << " is empty");
  return out;
}

}  // namespace mla
