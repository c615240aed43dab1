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

  // Optional fields (absent: the value in brackets, which keeps a profile written before them
  // running as it did).
  // How a chunk of several KV blocks runs [merged]: "merged", one QK / SM / PV over all the
  // chunk's tokens (the CPU kernels' step); "block", the seed's reading: per-block QK, SM and PV
  // inside the chunk ("QK, QK, PV, PV ... SM, SM, U") and one UP per chunk.
  bool block_reading = false;
  // block reading: the cube <-> vector flags [block]: "block" hands each block over as it is done;
  // "chunk" waits for every block of the chunk.
  bool flags_per_chunk = false;
  // Slots of each buffer between the units [buffers], in chunks (block reading: a chunk of c
  // blocks takes c block slots, so chunk 4 doubles chunk 2's workspace of S, P and Otmp, as the
  // seed says) or steps (merged). The cube runs QK at most s_slots - 1 chunks ahead of PV.
  int s_slots = 0, p_slots = 0, lo_slots = 0;
  int kv_l1_chunks = 0;                 // block reading: L1 KV slots in chunks [buffers]
  double up_ops_per_extra_block = -1;   // block reading: UP work per output element for each
                                        // further block of the chunk [up_ops_per_element]
  double hbm_bytes_per_s = 0;           // chip total shared by the busy cores [0: none]; each
                                        // core reads KV at min(kv_read_bytes_per_s, hbm / busy)
  std::string grid_old_reduction = "separate", grid_new_reduction = "last";  // --grid seed
};

// Who splits the work over the cores (Profile::scheduler, `mla sim --split`):
//   planner     mla::make_plan, as `mla decode` does
//   tp1         the seed accelerator's tiling (catlass examples/19_mla: model.h, sim_plan);
//               "ascend-tp1" is the same
//   none        one item per (sequence, query token) with every head, never split (Ascend's int8
//               MLA: its CalcSplitNum returns 1)
//   pieces=N    each such task cut into N pieces of ceil(blocks / N) blocks
//   round=T     each task cut into pieces of T tokens (rounded up to whole blocks)
// Tasks and pieces go round-robin over the cores, in task order.
struct Split {
  enum Kind { planner, tp1, none, pieces, round } kind = planner;
  int n = 0;  // pieces: N; round: T
};
// Throws mla::Error naming the text when it is none of the forms above.
Split parse_split(const std::string& text);
std::string split_name(const Split& s);

// A profile by name ("ascend-910b", "cpu": profiles/<name>.json, searched in $MLA_PROFILE_DIR,
// ./profiles and <directory of the running program>/../profiles) or by file path (anything with a
// '/' or ending in ".json"). Throws mla::Error naming the file and the field that is missing,
// has the wrong type or an impossible value.
Profile load_profile(const std::string& name_or_path);
Profile profile_from_json_text(const std::string& text, const std::string& origin);

}  // namespace mla::sim
