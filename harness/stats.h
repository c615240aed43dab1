// Timing statistics for the benchmark table: median and spread of repeated runs, and how many
// repetitions a run of a given length gets.
#pragma once

#include <chrono>
#include <vector>

namespace mla::bench {

struct Stats {
  int n = 0;
  double median = 0, p10 = 0, p90 = 0, min = 0, max = 0;  // seconds
  // (p90 - p10) / median: the noise as a fraction of the reported time.
  double spread() const { return median > 0 ? (p90 - p10) / median : 0; }
};

// Percentiles by linear interpolation between order statistics. Throws mla::Error when empty.
Stats summarize(std::vector<double> seconds);

// Repetitions so that reps * run_s is about target_s, within [min_reps, max_reps].
int choose_reps(double run_s, double target_s, int min_reps, int max_reps);

inline double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace mla::bench
