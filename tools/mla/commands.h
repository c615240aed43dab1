// The `mla` command's subcommands. Each registers itself on the CLI11 app and runs when chosen.
// Exit codes: 0 success, 1 a failed check (e.g. accuracy), 2 bad input or usage.
#pragma once

#include <CLI/CLI.hpp>

#include <cstdint>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

#include "mla/comm.h"

namespace mla::tool {

// A check that ran and failed (accuracy, a benchmark row's check): exit code 1.
struct CheckFailed : std::runtime_error {
  using std::runtime_error::runtime_error;
};

void add_decode_command(CLI::App& app);
void add_bench_command(CLI::App& app);
void add_formats_command(CLI::App& app);
void add_layer_command(CLI::App& app);
void add_demo_command(CLI::App& app);
void add_sim_command(CLI::App& app);  // sim.cc: the pipeline simulator (src/sim)

// tp.cc: the tensor-parallel group of --tp N (N = 1: this process alone; N > 1: the N processes of
// mpirun, which must have started exactly N). tp_group() is nullptr before open_tp_group; main
// aborts the whole group when a command fails on any rank, and closes it (MPI_Finalize) at exit.
Communicator* open_tp_group(int tp);
Communicator* tp_group();
void close_tp_group();
std::string affinity_string();  // this process's CPUs, as "0-3,8" (what mpirun --bind-to gave it)

// One float32 .npy output of a command.
struct OutFile {
  const char* name;
  std::vector<int64_t> shape;
  const float* data;
};
// All or nothing, also across a kill (decode.cc): the set is written into a sibling of `dir` and
// swapped with it in one rename (RENAME_EXCHANGE); on any failure the previous files are
// unchanged and an mla::Error says nothing was written. `dir` may hold only mla outputs.
void write_outputs(const std::string& dir, const std::vector<OutFile>& files);
// Refuses (before any work) an --out that exists and is not a directory of mla outputs.
void check_out_dir(const std::filesystem::path& dir);

}  // namespace mla::tool
