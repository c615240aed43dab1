// Profile files (see profile.h). Every field is required, so a profile states each figure it uses
// (and, in its "sources" object, where the figure comes from); unknown fields are refused, so a
// misspelt name cannot silently leave a default in place.
#include "sim/profile.h"

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "mla/status.h"

namespace mla::sim {

namespace {

using nlohmann::json;

std::string read_text(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  MLA_CHECK(f.good(), "profile " << p.string() << ": cannot open");
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::filesystem::path program_dir() {
  std::error_code ec;
  const auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::filesystem::path() : exe.parent_path();
}

}  // namespace

Split parse_split(const std::string& text) {
  if (text == "planner") return {Split::planner, 0};
  if (text == "tp1" || text == "ascend-tp1") return {Split::tp1, 0};
  if (text == "none") return {Split::none, 0};
  for (auto [prefix, kind] : {std::pair{"pieces=", Split::pieces}, std::pair{"round=", Split::round}}) {
    const std::string pre = prefix;
    if (text.compare(0, pre.size(), pre) != 0) continue;
    const std::string num = text.substr(pre.size());
    size_t used = 0;
    long v = 0;
    try {
      v = std::stol(num, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    MLA_CHECK(used == num.size() && !num.empty() && v >= 1 && v <= (1 << 20),
              "split '" << text << "': " << pre << "N needs an integer N in 1.." << (1 << 20));
    return {kind, int(v)};
  }
  MLA_FAIL("split '" << text << "' is not planner, tp1, none, pieces=N or round=T");
}

std::string split_name(const Split& s) {
  switch (s.kind) {
    case Split::planner: return "planner";
    case Split::tp1: return "tp1";
    case Split::none: return "none";
    case Split::pieces: return "pieces=" + std::to_string(s.n);
    case Split::round: return "round=" + std::to_string(s.n);
  }
  return "?";
}

Profile profile_from_json_text(const std::string& text, const std::string& origin) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    MLA_FAIL("profile " << origin << ": not JSON: " << e.what());
  }
  MLA_CHECK(j.is_object(), "profile " << origin << ": not a JSON object");
  Profile p;
  // name -> setter; each one checks its value's type and range.
  std::map<std::string, std::function<void(const json&)>> fields;
  auto text_field = [&](const char* key, std::string& out) {
    fields[key] = [&out, key, &origin](const json& v) {
      MLA_CHECK(v.is_string(), "profile " << origin << ": \"" << key << "\" must be a string");
      out = v.get<std::string>();
    };
  };
  auto bool_field = [&](const char* key, bool& out) {
    fields[key] = [&out, key, &origin](const json& v) {
      MLA_CHECK(v.is_boolean(), "profile " << origin << ": \"" << key << "\" must be true/false");
      out = v.get<bool>();
    };
  };
  auto int_field = [&](const char* key, int& out, int lo, int hi) {
    fields[key] = [&out, key, lo, hi, &origin](const json& v) {
      MLA_CHECK(v.is_number_integer() && v.get<int64_t>() >= lo && v.get<int64_t>() <= hi,
                "profile " << origin << ": \"" << key << "\" = " << v.dump()
                           << " must be an integer in [" << lo << ", " << hi << "]");
      out = v.get<int>();
    };
  };
  // positive: rates must be > 0; otherwise >= 0 (a bandwidth of 0 means "no such transfer").
  auto num_field = [&](const char* key, double& out, bool positive) {
    fields[key] = [&out, key, positive, &origin](const json& v) {
      const double x = v.is_number() ? v.get<double>() : NAN;
      MLA_CHECK(std::isfinite(x) && (positive ? x > 0 : x >= 0),
                "profile " << origin << ": \"" << key << "\" = " << v.dump() << " must be a "
                           << (positive ? "positive" : "non-negative") << " number");
      out = x;
    };
  };
  text_field("name", p.name);
  text_field("description", p.description);
  bool_field("shared_unit", p.shared_unit);
  fields["scheduler"] = [&p, &origin](const json& v) {
    MLA_CHECK(v.is_string(), "profile " << origin << ": \"scheduler\" must be a string");
    p.scheduler = v.get<std::string>();
    try {
      (void)parse_split(p.scheduler);
    } catch (const Error& e) {
      MLA_FAIL("profile " << origin << ": \"scheduler\": " << e.what());
    }
  };
  int_field("vector_units", p.vector_units, 1, 64);
  bool_field("workspace_transfers", p.workspace_transfers);
  bool_field("two_stage_qk_sync", p.two_stage_qk_sync);
  int_field("buffers", p.buffers, 1, 64);
  int_field("cube_preload", p.cube_preload, 0, 63);
  int_field("kv_tile", p.kv_tile, 1, 1 << 16);
  int_field("default_chunk", p.default_chunk, 1, 1024);
  int_field("default_cores", p.default_cores, 1, 4096);
  num_field("matrix_int8_ops_per_s", p.matrix_int8_ops_per_s, true);
  num_field("matrix_bf16_flops_per_s", p.matrix_bf16_flops_per_s, true);
  num_field("vector_ops_per_s", p.vector_ops_per_s, true);
  num_field("sm_ops_per_element", p.sm_ops_per_element, false);
  num_field("up_ops_per_element", p.up_ops_per_element, false);
  num_field("merge_ops_per_element", p.merge_ops_per_element, false);
  num_field("kv_read_bytes_per_s", p.kv_read_bytes_per_s, false);
  num_field("ws_read_bytes_per_s", p.ws_read_bytes_per_s, false);
  num_field("ws_write_bytes_per_s", p.ws_write_bytes_per_s, false);
  num_field("sync_latency_us", p.sync_latency_us, false);
  num_field("overhead_qk_us", p.overhead_qk_us, false);
  num_field("overhead_sm_us", p.overhead_sm_us, false);
  num_field("overhead_pv_us", p.overhead_pv_us, false);
  num_field("overhead_up_us", p.overhead_up_us, false);
  num_field("overhead_transfer_us", p.overhead_transfer_us, false);
  num_field("overhead_merge_us", p.overhead_merge_us, false);
  num_field("item_overhead_us", p.item_overhead_us, false);
  num_field("call_overhead_us", p.call_overhead_us, false);
  num_field("separate_pass_overhead_us", p.separate_pass_overhead_us, false);
  // Optional fields (profile.h).
  std::map<std::string, std::function<void(const json&)>> optional;
  auto choice_field = [&](const char* key, bool& out, const char* yes, const char* no) {
    optional[key] = [&out, key, yes, no, &origin](const json& v) {
      MLA_CHECK(v.is_string() && (v.get<std::string>() == yes || v.get<std::string>() == no),
                "profile " << origin << ": \"" << key << "\" = " << v.dump() << " must be \""
                           << yes << "\" or \"" << no << "\"");
      out = v.get<std::string>() == yes;
    };
  };
  auto reduction_field = [&](const char* key, std::string& out) {
    optional[key] = [&out, key, &origin](const json& v) {
      MLA_CHECK(v.is_string() && (v.get<std::string>() == "separate" ||
                                  v.get<std::string>() == "last" ||
                                  v.get<std::string>() == "inkernel"),
                "profile " << origin << ": \"" << key << "\" = " << v.dump()
                           << " must be \"separate\", \"last\" or \"inkernel\"");
      out = v.get<std::string>();
    };
  };
  choice_field("chunk_reading", p.block_reading, "block", "merged");
  choice_field("flags", p.flags_per_chunk, "chunk", "block");
  for (auto [key, out] : {std::pair{"s_slots", &p.s_slots}, std::pair{"p_slots", &p.p_slots},
                          std::pair{"lo_slots", &p.lo_slots},
                          std::pair{"kv_l1_chunks", &p.kv_l1_chunks}}) {
    int_field(key, *out, 1, 64);
    optional[key] = fields[key];
    fields.erase(key);
  }
  num_field("up_ops_per_extra_block", p.up_ops_per_extra_block, false);
  num_field("hbm_bytes_per_s", p.hbm_bytes_per_s, false);
  for (const char* key : {"up_ops_per_extra_block", "hbm_bytes_per_s"}) {
    optional[key] = fields[key];
    fields.erase(key);
  }
  reduction_field("grid_old_reduction", p.grid_old_reduction);
  reduction_field("grid_new_reduction", p.grid_new_reduction);
  // Documentation: where each figure comes from (every field but name, description and fit
  // names its source: a datasheet, a paper, or the command that measured it).
  fields["sources"] = [&origin](const json& v) {
    MLA_CHECK(v.is_object(), "profile " << origin << ": \"sources\" must be an object");
  };
  fields["fit"] = [](const json&) {};
  for (const auto& [key, value] : j.items())
    MLA_CHECK(fields.count(key) || optional.count(key),
              "profile " << origin << ": unknown field \"" << key << "\"");
  for (const auto& [key, set] : fields) {
    if (key == "fit") continue;
    MLA_CHECK(j.contains(key), "profile " << origin << ": field \"" << key << "\" is missing");
    set(j.at(key));
  }
  for (const auto& [key, set] : optional)
    if (j.contains(key)) set(j.at(key));
  const json& src = j.at("sources");
  for (const auto& [key, value] : j.items()) {
    if (key == "name" || key == "description" || key == "sources" || key == "fit") continue;
    MLA_CHECK(src.contains(key) && src.at(key).is_string() && !src.at(key).get<std::string>().empty(),
              "profile " << origin << ": \"" << key << "\" has no source (\"sources\": {\""
                         << key << "\": \"a datasheet, a paper, or the command that measured it\"})");
  }

  MLA_CHECK(p.buffers >= p.cube_preload + 1,
            "profile " << origin << ": buffers = " << p.buffers << " cannot hold cube_preload = "
                       << p.cube_preload << " steps ahead (needs at least preload + 1)");
  return p;
}

Profile load_profile(const std::string& name_or_path) {
  MLA_CHECK(!name_or_path.empty(), "--profile is empty");
  const bool is_path =
      name_or_path.find('/') != std::string::npos ||
      (name_or_path.size() > 5 && name_or_path.compare(name_or_path.size() - 5, 5, ".json") == 0);
  if (is_path) {
    MLA_CHECK(std::filesystem::is_regular_file(name_or_path),
              "--profile " << name_or_path << ": no such file");
    return profile_from_json_text(read_text(name_or_path), name_or_path);
  }
  std::vector<std::filesystem::path> dirs;
  if (const char* env = std::getenv("MLA_PROFILE_DIR")) dirs.emplace_back(env);
  dirs.emplace_back("profiles");
  if (const auto d = program_dir(); !d.empty()) dirs.push_back(d.parent_path() / "profiles");
  std::string tried;
  for (const auto& d : dirs) {
    const auto f = d / (name_or_path + ".json");
    if (std::filesystem::is_regular_file(f))
      return profile_from_json_text(read_text(f), f.string());
    tried += (tried.empty() ? "" : ", ") + f.string();
  }
  MLA_FAIL("--profile " << name_or_path << ": no profile of that name (looked for " << tried
                        << ")");
}

}  // namespace mla::sim
