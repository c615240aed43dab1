// Median, percentiles and repetition counts for the benchmark table.
#include "harness/stats.h"

#include <algorithm>
#include <cmath>

#include "mla/status.h"

namespace mla::bench {

namespace {

double percentile(const std::vector<double>& sorted, double q) {
  const double pos = q * double(sorted.size() - 1);
  const size_t lo = size_t(std::floor(pos));
  const size_t hi = std::min(lo + 1, sorted.size() - 1);
  return sorted[lo] + (pos - double(lo)) * (sorted[hi] - sorted[lo]);
}

}  // namespace

Stats summarize(std::vector<double> s) {
  MLA_CHECK(!s.empty(), "no timing samples to summarize");
  std::sort(s.begin(), s.end());
  return Stats{.n = int(s.size()),
               .median = percentile(s, 0.5),
               .p10 = percentile(s, 0.1),
               .p90 = percentile(s, 0.9),
               .min = s.front(),
               .max = s.back()};
}

int choose_reps(double run_s, double target_s, int min_reps, int max_reps) {
  if (!(run_s > 0)) return max_reps;
  const double r = std::ceil(target_s / run_s);
  return int(std::clamp(r, double(min_reps), double(max_reps)));
}

}  // namespace mla::bench
