// Errors. Every refusal of bad input throws mla::Error with a message that names the offending
// value ("seq_lens[3] = 70 exceeds 1 block x 64 tokens"); the command line turns it into exit 2.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

#include "mla/export.h"

namespace mla {

class MLA_API Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace mla

// MLA_CHECK(cond, "seq_lens[" << b << "] = " << v << " is negative");
#define MLA_CHECK(cond, msg)                       \
  do {                                             \
    if (!(cond)) {                                 \
      std::ostringstream mla_check_os_;            \
      mla_check_os_ << msg;                        \
      throw ::mla::Error(mla_check_os_.str());     \
    }                                              \
  } while (0)

#define MLA_FAIL(msg) MLA_CHECK(false, msg)
