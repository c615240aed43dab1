// The simulator's cost model: the named parameters of a machine (DESIGN §8), read from a profile
// file (profiles/*.json). Stage costs are computed from a stage's rows and tokens (core/stages.h)
// with these rates, so one schedule can be timed on any machine:
//
//   matrix stage  overhead + 2 x rows x tokens x depth / matrix rate of its dtype
//                 (depth: QK 576, QK_nope 512 int8, QK_rope 64, PV 512)
//   SM            overhead + rows x tokens x sm_ops_per_element / vector rate   (per vector unit)
//   UP            overhead + rows x 512 x up_ops_per_element / vector rate      (per vector unit)
//   transfer      overhead + bytes / bandwidth of its path (KV from global memory, workspace)
//   merge         overhead + rows x partials x 512 x merge_ops_per_element / vector rate + bytes
#pragma once

#include <string>

namespace mla::sim {

struct Profile {
  std::string name;
  std::string description;
  // Structure.
  bool shared_unit = false;         // one unit runs matrix, vector and transfer work serially (CPU)
  // Who splits the work over the cores: "planner" (mla::make_plan, as `mla decode` does) or
  // "ascend-tp1" (the accelerator's own tiling: sim_plan in model.h).
  std::string scheduler = "planner";
  int vector_units = 2;             // per core; SM, UP and merges are split across them by rows
  bool workspace_transfers = true;  // S, P, lo pass through global memory between the units
  bool two_stage_qk_sync = true;    // int8: S_nope is handed over before QK_rope finishes
  int buffers = 2;                  // ping-pong depth of every buffer between the units
  int cube_preload = 1;             // QK of step s + preload is issued before PV of step s
  int kv_tile = 64;                 // tokens per KV tile (the plan's and the stage list's tile)
  int default_chunk = 4;            // chunk of the "new" pipeline in --grid seed
  int default_cores = 2;            // --c of --grid seed when not given
  // Rates, per core (matrix) or per vector unit.
  double matrix_int8_ops_per_s = 0;  // multiply-adds count 2
  double matrix_bf16_flops_per_s = 0;
  double vector_ops_per_s = 0;       // fp32 element operations per second, one vector unit
  double sm_ops_per_element = 0;     // per score: scale, mask, max, exp, sum, quantize
  double up_ops_per_element = 0;     // per output element per step: rescale, dequant, add
  double merge_ops_per_element = 0;  // per partial output element in the split-KV merge
  // Bandwidths, bytes per second per core.
  double kv_read_bytes_per_s = 0;   // cache tiles from global memory into L1 (0: no transfer)
  double ws_read_bytes_per_s = 0;   // workspace (S, P, lo, spilled accumulator) into L1 / UB
  double ws_write_bytes_per_s = 0;  // UB to the workspace / output
  // Latencies and fixed costs, microseconds.
  double sync_latency_us = 0;  // a cross-core flag (matrix <-> vector, worker <-> worker)
  double overhead_qk_us = 0, overhead_sm_us = 0, overhead_pv_us = 0, overhead_up_us = 0;
  double overhead_transfer_us = 0, overhead_merge_us = 0;
  double item_overhead_us = 0;           // per work item: query load, accumulator set-up
  double call_overhead_us = 0;           // per decode call: launch, thread wake-up
  double separate_pass_overhead_us = 0;  // start of the separate reduction pass
};

// A profile by name ("ascend-910b", "cpu": profiles/<name>.json, searched in $MLA_PROFILE_DIR,
// ./profiles and <directory of the running program>/../profiles) or by file path (anything with a
// '/' or ending in ".json"). Throws mla::Error naming the file and the field that is missing,
// has the wrong type or an impossible value.
Profile load_profile(const std::string& name_or_path);
Profile profile_from_json_text(const std::string& text, const std::string& origin);

}  // namespace mla::sim
