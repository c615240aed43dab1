// One core's simulated timeline as a standalone SVG (see model.h): a lane per unit of the core,
// a rectangle per task coloured by kind and labelled with its stage and step where it is wide
// enough, a hover title with the exact times, and the matrix unit's idle time inside the core's
// busy span shaded red (the bubbles).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

#include "mla/status.h"
#include "sim/model.h"

namespace mla::sim {

namespace {

const char* colour(const SimTask& t) {
  if (t.op == Op::stage) {
    switch (t.stage) {
      case Stage::QK:
        return "#4e79a7";
      case Stage::QK_nope:
        return "#4e79a7";
      case Stage::QK_rope:
        return "#76b7e4";
      case Stage::PV:
        return "#59a14f";
      case Stage::SM:
        return "#f28e2b";
      case Stage::UP:
        return "#b07aa1";
    }
  }
  switch (t.op) {
    case Op::load_kv:
      return "#9c9c9c";
    case Op::load_s:
    case Op::load_p:
    case Op::load_lo:
      return "#c7c7c7";
    case Op::load_go:
      return "#d4a6c8";
    case Op::store_p:
      return "#ffbe7d";
    case Op::store_go:
      return "#8c6d8c";
    case Op::merge:
      return "#e15759";
    default:
      return "#bab0ac";
  }
}

std::string label(const SimTask& t) {
  if (t.op == Op::stage) return std::string(stage_name(t.stage)) + std::to_string(t.step);
  if (t.op == Op::merge) return "merge";
  return op_name(t.op);
}

std::string xml(const std::string& text) {
  std::string out;
  for (const char c : text) {
    switch (c) {
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '&':
        out += "&amp;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::string num(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.2f", v);
  return b;
}

}  // namespace

std::string timeline_svg(const SimResult& r, const SimConfig& cfg, const Profile& prof, int core) {
  MLA_CHECK(core >= 0 && core < cfg.cores,
            "timeline core " << core << " outside 0.." << cfg.cores - 1);
  const int lanes = r.sched.lanes_per_core;
  const double span = std::max(r.tl.makespan_us, 1e-9);
  const double left = 120, width = 1400, top = 70, lane_h = 34, gap = 6;
  const double xs = width / span;
  const double height = top + lanes * (lane_h + gap) + 90;
  std::ostringstream s;
  s << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << left + width + 20 << "\" height=\""
    << height << "\" font-family=\"sans-serif\" font-size=\"11\">\n";
  s << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  s << "<text x=\"10\" y=\"20\" font-size=\"14\">mla sim --profile " << xml(prof.name) << " --b "
    << cfg.batch << " --k " << cfg.k << " --c " << cfg.cores << " --heads " << cfg.heads
    << " --q-len " << cfg.q_len << " --kv-dtype " << kv_dtype_name(cfg.kv) << " --chunk "
    << cfg.chunk << " --up " << (cfg.up == UpForm::resident ? "resident" : "spill")
    << " --reduction " << sim_reduction_name(cfg.reduction) << " --sm-scale "
    << cfg.sm_scale << "</text>\n";
  s << "<text x=\"10\" y=\"40\">core " << core << " of " << cfg.cores << "; predicted "
    << num(r.predicted_us) << " us (makespan " << num(r.tl.makespan_us) << " us); cube busy "
    << num(100 * r.cube_busy) << "%, vector busy " << num(100 * r.vector_busy) << "%, bubble "
    << num(r.bubble_us) << " us; red shade: the matrix unit idle while the core works</text>\n";

  // Which resource is which lane of this core.
  std::vector<std::string> names(lanes);
  for (int l = 0; l < lanes; ++l) names[l] = prof.shared_unit ? "core (serial)" : lane_name(l);
  const int32_t r0 = core * lanes;
  auto lane_y = [&](int l) { return top + l * (lane_h + gap); };
  for (int l = 0; l < lanes; ++l) {
    s << "<text x=\"8\" y=\"" << lane_y(l) + lane_h / 2 + 4 << "\">" << names[l] << "</text>\n";
    s << "<rect x=\"" << left << "\" y=\"" << lane_y(l) << "\" width=\"" << width << "\" height=\""
      << lane_h << "\" fill=\"#f7f7f7\"/>\n";
  }
  // Bubbles: gaps between the matrix stages of the core, inside its busy span.
  double first = INFINITY, last = 0;
  std::vector<std::pair<double, double>> matrix;
  for (size_t t = 0; t < r.sched.tasks.size(); ++t) {
    if (r.tl.resource[t] < r0 || r.tl.resource[t] >= r0 + lanes) continue;
    first = std::min(first, r.tl.start_us[t]);
    last = std::max(last, r.tl.end_us[t]);
    const SimTask& task = r.sched.tasks[t];
    if (task.op == Op::stage && stage_unit(task.stage) == Unit::matrix)
      matrix.push_back({r.tl.start_us[t], r.tl.end_us[t]});
  }
  std::sort(matrix.begin(), matrix.end());
  if (!prof.shared_unit && std::isfinite(first)) {
    double at = first;
    for (const auto& [a, b] : matrix) {
      if (a > at)
        s << "<rect x=\"" << left + at * xs << "\" y=\"" << lane_y(kLaneCube) << "\" width=\""
          << (a - at) * xs << "\" height=\"" << lane_h
          << "\" fill=\"#e15759\" fill-opacity=\"0.25\"><title>bubble " << num(a - at)
          << " us</title></rect>\n";
      at = std::max(at, b);
    }
    if (last > at)
      s << "<rect x=\"" << left + at * xs << "\" y=\"" << lane_y(kLaneCube) << "\" width=\""
        << (last - at) * xs << "\" height=\"" << lane_h
        << "\" fill=\"#e15759\" fill-opacity=\"0.25\"><title>bubble " << num(last - at)
        << " us</title></rect>\n";
  }
  for (size_t t = 0; t < r.sched.tasks.size(); ++t) {
    const int32_t res = r.tl.resource[t];
    if (res < r0 || res >= r0 + lanes) continue;
    const SimTask& task = r.sched.tasks[t];
    const double x = left + r.tl.start_us[t] * xs;
    const double w = std::max((r.tl.end_us[t] - r.tl.start_us[t]) * xs, 0.5);
    const double y = lane_y(res - r0);
    s << "<rect x=\"" << x << "\" y=\"" << y + 2 << "\" width=\"" << w << "\" height=\""
      << lane_h - 4 << "\" fill=\"" << colour(task) << "\" stroke=\"white\" stroke-width=\"0.5\">"
      << "<title>" << label(task) << " item " << task.item << " step " << task.step << ": "
      << num(r.tl.start_us[t]) << " .. " << num(r.tl.end_us[t]) << " us</title></rect>\n";
    const std::string text = label(task);
    if (w > 7.0 * double(text.size()))
      s << "<text x=\"" << x + w / 2 << "\" y=\"" << y + lane_h / 2 + 4
        << "\" text-anchor=\"middle\" fill=\"white\">" << text << "</text>\n";
  }
  // Time axis.
  const double axis_y = top + lanes * (lane_h + gap) + 10;
  s << "<line x1=\"" << left << "\" y1=\"" << axis_y << "\" x2=\"" << left + width << "\" y2=\""
    << axis_y << "\" stroke=\"black\"/>\n";
  const double raw = span / 10;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  const double tick = raw / mag < 2 ? 2 * mag : raw / mag < 5 ? 5 * mag : 10 * mag;
  for (double t = 0; t <= span + 1e-9; t += tick)
    s << "<line x1=\"" << left + t * xs << "\" y1=\"" << axis_y << "\" x2=\"" << left + t * xs
      << "\" y2=\"" << axis_y + 5 << "\" stroke=\"black\"/><text x=\"" << left + t * xs << "\" y=\""
      << axis_y + 18 << "\" text-anchor=\"middle\">" << num(t) << "</text>\n";
  s << "<text x=\"" << left + width / 2 << "\" y=\"" << axis_y + 34
    << "\" text-anchor=\"middle\">time (us)</text>\n";
  // Legend.
  const char* const keys[][2] = {
      {"QK / QK_nope", "#4e79a7"}, {"QK_rope", "#76b7e4"}, {"PV", "#59a14f"},
      {"SM", "#f28e2b"},           {"UP", "#b07aa1"},      {"load KV", "#9c9c9c"},
      {"load S/P/lo", "#c7c7c7"},  {"store P", "#ffbe7d"}, {"load / store go", "#8c6d8c"},
      {"merge", "#e15759"}};
  double lx = left;
  for (const auto& k : keys) {
    s << "<rect x=\"" << lx << "\" y=\"" << axis_y + 46 << "\" width=\"12\" height=\"12\" fill=\""
      << k[1] << "\"/><text x=\"" << lx + 16 << "\" y=\"" << axis_y + 56 << "\">" << k[0]
      << "</text>\n";
    lx += 130;
  }
  s << "</svg>\n";
  return s.str();
}

}  // namespace mla::sim
