// Comma-separated integer lists, the one parser for them: `mla bench --b/--k/--threads`, `mla sim
// --chunk` and the roofline's reading of Linux's CPU lists ("0-7,64-71", ranges allowed there).
// In core, the lowest layer, so the tools and the roofline (which sees only mla_core) share it.
#pragma once

#include <string>
#include <vector>

namespace mla {

// The integers of `text` ("1,2,4"; with `ranges`, "a-b" items stand for a..b). Throws mla::Error
// naming `what`, the text and the item for an empty list or item, a value that is not an integer
// in [lo, hi], or a range that runs backwards.
std::vector<int> parse_int_list(const std::string& text, const std::string& what, int lo, int hi,
                                bool ranges = false);

}  // namespace mla
