// Parsing of the benchmark's --variants text (grammar in variants.h).
#include "harness/variants.h"

#include <set>
#include <sstream>

#include "mla/status.h"

namespace mla::bench {

namespace {

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::string cur;
  for (char ch : s) {
    if (ch == sep) {
      out.push_back(cur);
      cur.clear();
    } else {
      cur += ch;
    }
  }
  out.push_back(cur);
  return out;
}

std::string trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t") - b + 1);
}

int parse_chunk(const std::string& v, const std::string& item) {
  size_t used = 0;
  long n = 0;
  try {
    n = std::stol(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  MLA_CHECK(used == v.size() && !v.empty() && n >= 1 && n <= 1024,
            "variant item '" << item << "': chunk must be an integer from 1 to 1024");
  return int(n);
}

}  // namespace

DecodeOptions old_options() {
  DecodeOptions o;
  o.chunk = 1;
  o.up = UpForm::spill;
  o.reduction = Reduction::separate;
  return o;
}

DecodeOptions new_options(int chunk) {
  DecodeOptions o;
  o.chunk = chunk;
  o.up = UpForm::resident;
  o.reduction = Reduction::last;
  return o;
}

std::string Variant::describe() const {
  std::ostringstream os;
  os << "chunk=" << opt.chunk << ",up=" << (opt.up == UpForm::resident ? "resident" : "spill")
     << ",red=" << (opt.reduction == Reduction::last ? "last" : "separate")
     << ",isa=" << isa_name(opt.isa)
     << ",impl=" << (opt.impl == Impl::fast ? "fast" : "ref");
  if (opt.kernel) os << ",kernel=" << opt.kernel;
  if (rotation != KvRotation::none) os << ",rot=" << kv_rotation_name(rotation);
  return os.str();
}

Variant parse_variant(const std::string& config, int default_chunk) {
  MLA_CHECK(default_chunk >= 1, "--chunk = " << default_chunk << " must be at least 1");
  Variant v{.text = trim(config), .opt = new_options(default_chunk)};
  MLA_CHECK(!v.text.empty(), "empty variant configuration (expected e.g. 'chunk=1,up=spill')");
  std::set<std::string> seen;
  const std::vector<std::string> items = split(v.text, ',');
  for (size_t n = 0; n < items.size(); ++n) {
    const std::string item = trim(items[n]);
    MLA_CHECK(!item.empty(), "variant '" << v.text << "': empty item");
    if (item == "old" || item == "new") {
      MLA_CHECK(n == 0, "variant '" << v.text << "': the preset '" << item << "' must come first");
      v.opt = item == "old" ? old_options() : new_options(default_chunk);
      continue;
    }
    const size_t eq = item.find('=');
    MLA_CHECK(eq != std::string::npos,
              "variant item '" << item << "' is neither a preset (old, new) nor key=value");
    std::string key = trim(item.substr(0, eq));
    const std::string val = trim(item.substr(eq + 1));
    if (key == "reduction") key = "red";
    MLA_CHECK(seen.insert(key).second,
              "variant '" << v.text << "': key '" << key << "' given twice");
    if (key == "chunk") {
      v.opt.chunk = parse_chunk(val, item);
    } else if (key == "up") {
      MLA_CHECK(val == "resident" || val == "spill",
                "variant item '" << item << "': up must be resident or spill");
      v.opt.up = val == "resident" ? UpForm::resident : UpForm::spill;
    } else if (key == "red") {
      MLA_CHECK(val == "separate" || val == "last",
                "variant item '" << item << "': red must be separate or last");
      v.opt.reduction = val == "last" ? Reduction::last : Reduction::separate;
    } else if (key == "isa") {
      MLA_CHECK(isa_from_name(val, &v.opt.isa),
                "variant item '" << item << "': isa must be best, avx512, avx2 or portable");
      v.isa_given = true;
    } else if (key == "impl") {
      MLA_CHECK(val == "fast" || val == "ref",
                "variant item '" << item << "': impl must be fast or ref");
      v.opt.impl = val == "fast" ? Impl::fast : Impl::ref;
    } else if (key == "kernel") {
      // A kernel of the registry by name (one of an ISA's several: decode_i8_avx2 against
      // decode_i8_avx2vnni); the name is checked when the variant runs. Interned: the options hold
      // a plain pointer and variants are copied.
      static std::set<std::string> names;
      MLA_CHECK(!val.empty(), "variant item '" << item << "': kernel needs a name");
      v.opt.kernel = names.insert(val).first->c_str();
    } else if (key == "rot") {
      MLA_CHECK(val == "none" || val == "hadamard",
                "variant item '" << item << "': rot must be none or hadamard");
      v.rotation = parse_kv_rotation(val);
    } else {
      MLA_FAIL("variant item '" << item << "': unknown key '" << key
                                << "' (expected chunk, up, red, isa, impl, kernel or rot)");
    }
  }
  return v;
}

std::vector<Variant> parse_variants(const std::string& spec, int default_chunk) {
  const std::vector<std::string> parts = split(spec, ':');
  MLA_CHECK(parts.size() == 2, "--variants '" << spec << "' has " << parts.size()
                                              << " configuration(s); expected two, OLD:NEW");
  return {parse_variant(parts[0], default_chunk), parse_variant(parts[1], default_chunk)};
}

}  // namespace mla::bench
