// The `mla` command's subcommands. Each registers itself on the CLI11 app and runs when chosen.
// Exit codes: 0 success, 1 a failed check (e.g. accuracy), 2 bad input or usage.
#pragma once

#include <CLI/CLI.hpp>

#include <stdexcept>

namespace mla::tool {

// A check that ran and failed (accuracy, a benchmark row's check): exit code 1.
struct CheckFailed : std::runtime_error {
  using std::runtime_error::runtime_error;
};

void add_decode_command(CLI::App& app);
void add_bench_command(CLI::App& app);
void add_formats_command(CLI::App& app);
void add_sim_command(CLI::App& app);  // sim.cc: the pipeline simulator (src/sim)

}  // namespace mla::tool
