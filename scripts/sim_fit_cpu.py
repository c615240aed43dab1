#!/usr/bin/env python3
"""Fits a CPU profile of the simulator (profiles/cpu.json: the AVX-512 kernels; profiles/amx.json:
the AMX kernels, tile unit as the cube and AVX-512 as the vector unit) to `mla bench` times of the
kernels on single work items, measured by scripts/sim_measure_cpu.sh (docs/sim/measure/
$MACHINE-$ISA/run*/fit_*.json), and checks `mla sim` with that profile against what was measured
there but never fitted: the seed grid (grid_*.json) and the chunk 1/2/4 rows (chunk_*.json).

    python3 scripts/sim_fit_cpu.py fit   [--isa avx512|amx]   # writes profiles/cpu.json or amx.json
    python3 scripts/sim_fit_cpu.py check [--isa avx512|amx]   # the comparison tables of docs/SIM.md

Why a fit of totals: the kernels on main have no per-stage timers yet, so the stages cannot be timed
one by one. One thread runs every stage of a step serially, so a work item of R query rows over k
tokens in steps of n tokens costs (shared_unit in the profile):

    t = call + items x item + sum over steps [ R n a_dtype + n bytes_per_token / kv_bw
                                               + R x up + step + (spill, after step 0) R x spill ]

a_dtype (int8 or bf16) is the matrix + softmax work per query row and key; up the accumulator update
per row and step; step a fixed cost per step; spill the accumulator moved out and back per row and
step. These are the features of a weighted least-squares fit (relative residuals, non-negative
coefficients; rows measured more than 15% slower than the fit of the others are dropped one by
one, as only other processes' interference makes a run slower) over chunk 1/2/4, 128/256 rows, b 1/4, k 512/2048/4096, spilled and resident. With one
thread the planner makes one item per sequence, so the items are known without running it.

The split of a_dtype between the matrix stages and SM does not change a prediction on a shared unit;
it follows DESIGN §7 (the softmax stage is ~5% of the bf16 kernel's time). Times: per row, the
fastest repetition over all runs (the machine is shared; the fastest run is the least disturbed).
"""
import glob
import json
import math
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ISA = sys.argv[sys.argv.index("--isa") + 1] if "--isa" in sys.argv else "avx512"
MACHINE = os.environ.get("MACHINE", "xeon-amx")
MEASURE = os.path.join(ROOT, "docs", "sim", "measure", f"{MACHINE}-{ISA}")
NAME = {"avx512": "cpu", "amx": "amx"}[ISA]
# This machine's ceilings (bench/roofline): the nominal vector rate SM and UP are counted in.
CEILINGS = os.environ.get("CEILINGS", os.path.join(ROOT, "docs", "perf", "amx", "ceilings.json"))
TILE = 64  # kKvTile: tokens per tile of the CPU kernels
KV_BYTES = {"int8": 512 + 2 * 64, "bf16": 2 * 576}
SM_SHARE = 0.05  # DESIGN §7: the softmax stage is ~5% of the time
TRIM = 0.15  # rows measured this much slower than the fit are dropped as disturbed


def fastest(pattern):
    """{(file name, row name, variant): min_us over every run} for files matching pattern."""
    best = {}
    for path in sorted(glob.glob(os.path.join(MEASURE, "run*", pattern))):
        doc = json.load(open(path))
        for row in doc["rows"]:
            for var in ("old", "new"):
                key = (os.path.basename(path), row["name"], var)
                t = row[var]["min_us"]
                best[key] = min(best.get(key, math.inf), t)
    return best


def features(kv, rows, k, b, chunk, spill):
    step_tokens = TILE * chunk
    steps = -(-k // step_tokens)
    f = {
        "a_int8": b * rows * k if kv == "int8" else 0.0,
        "a_bf16": b * rows * k if kv == "bf16" else 0.0,
        "kv": b * k * KV_BYTES[kv],
        "up": b * steps * rows,
        "step": b * steps,
        "spill": b * (steps - 1) * rows if spill else 0.0,
        "item": b,
        "call": 1.0,
    }
    return f


NAMES = ["a_int8", "a_bf16", "kv", "up", "step", "spill", "item", "call"]


def solve(A, y):
    """Least squares by the normal equations (Gaussian elimination with pivoting)."""
    n = len(A[0])
    M = [[sum(A[r][i] * A[r][j] for r in range(len(A))) for j in range(n)] for i in range(n)]
    v = [sum(A[r][i] * y[r] for r in range(len(A))) for i in range(n)]
    for c in range(n):
        p = max(range(c, n), key=lambda r: abs(M[r][c]))
        M[c], M[p], v[c], v[p] = M[p], M[c], v[p], v[c]
        for r in range(n):
            if r != c and M[c][c] != 0:
                f = M[r][c] / M[c][c]
                M[r] = [M[r][j] - f * M[c][j] for j in range(n)]
                v[r] -= f * v[c]
    return [v[i] / M[i][i] if M[i][i] != 0 else 0.0 for i in range(n)]


def fit():
    best = fastest("fit_*.json")
    data = []
    for (fname, row, var), t in best.items():
        _, kv, h, c = os.path.splitext(fname)[0].split("_")
        heads, chunk = int(h[1:]), int(c[1:])
        b = int(row.split("_")[0][1:])
        k = int(row.split("_")[1][1:])
        spill = var == "old"  # fit runs: old = up=spill, new = up=resident
        data.append((features(kv, 2 * heads, k, b, chunk, spill), t, (fname, row, var)))
    if not data:
        sys.exit("no fit_*.json under docs/sim/measure/run*/: run scripts/sim_measure_cpu.sh fit")
    measured = len(data)
    dropped = []
    while True:
        active = list(NAMES)
        while True:  # non-negative least squares by dropping negative coefficients
            A = [[f[n] / t for n in active] for f, t, _ in data]  # relative residuals
            y = [1.0 for _ in data]
            x = solve(A, y)
            neg = [n for n, v in zip(active, x) if v < 0]
            if not neg:
                break
            active.remove(min(neg, key=lambda n: x[active.index(n)]))
        coef = {n: 0.0 for n in NAMES}
        coef.update(dict(zip(active, x)))
        resid = []
        for f, t, key in data:
            p = sum(coef[n] * f[n] for n in NAMES)
            resid.append((p / t - 1, key))
        # Other processes only ever make a run slower: a row measured more than TRIM slower than
        # the fit of the others was disturbed in every repetition; drop the worst and refit.
        worst_slow = min(range(len(data)), key=lambda i: resid[i][0])
        if resid[worst_slow][0] >= -TRIM:
            break
        dropped.append(" ".join(data[worst_slow][2]))
        del data[worst_slow]
    worst = max(resid, key=lambda r: abs(r[0]))
    rms = math.sqrt(sum(r * r for r, _ in resid) / len(resid))

    ceil = json.load(open(CEILINGS))
    c1 = [c for c in ceil["ceilings"] if c["threads"] == 1][0]
    vector_ops = c1["fp32_fma_gflops"] * 1e9  # nominal: SM/UP are counted in these ops
    us = 1e-6
    # a_bf16 = (2 x 576 + 2 x 512) / bf16 rate + SM; SM = SM_SHARE of a_bf16.
    sm = SM_SHARE * coef["a_bf16"]
    bf16_rate = 2176 / ((coef["a_bf16"] - sm) * us)
    # a_int8 = (2 x 512 + 2 x 512) / int8 rate + 2 x 64 / bf16 rate + SM.
    int8_rest = coef["a_int8"] - sm - 128 / bf16_rate / us
    int8_rate = 2048 / (int8_rest * us) if int8_rest > 0 else 2048 / (0.5 * coef["a_int8"] * us)
    what = {"cpu": "the AVX-512 (VNNI / BF16 dot) kernels",
            "amx": "the AMX kernels: the tile unit as the cube (QK, PV), AVX-512 as the vector "
                   "unit (SM, UP); one thread issues both, so a step's stages run serially"}[NAME]
    prof = {
        "name": NAME,
        "description": f"A 2-vCPU Intel Xeon with AMX ({MACHINE}) running {what}, one core per "
        "worker: matrix, vector and load work of a step run serially on the core (shared_unit). "
        "Fitted by scripts/sim_fit_cpu.py to mla bench --isa " + ISA + " times of single work "
        "items (docs/SIM.md).",
        "scheduler": "planner",
        "shared_unit": True,
        "vector_units": 1,
        "workspace_transfers": False,
        "two_stage_qk_sync": True,
        "buffers": 2,
        "cube_preload": 1,
        "kv_tile": TILE,
        "default_chunk": 4,
        "default_cores": 2,
        "matrix_int8_ops_per_s": int8_rate,
        "matrix_bf16_flops_per_s": bf16_rate,
        "vector_ops_per_s": vector_ops,
        "sm_ops_per_element": sm * us * vector_ops,
        "up_ops_per_element": coef["up"] * us * vector_ops / 512,
        "merge_ops_per_element": 3,
        "kv_read_bytes_per_s": 1 / (coef["kv"] * us) if coef["kv"] > 0 else 0,
        # spill: 512 floats out and back per row and step
        "ws_read_bytes_per_s": 2 * 2048 / (coef["spill"] * us) if coef["spill"] > 0 else 0,
        "ws_write_bytes_per_s": 2 * 2048 / (coef["spill"] * us) if coef["spill"] > 0 else 0,
        "sync_latency_us": 0,
        "overhead_qk_us": 0,
        "overhead_sm_us": 0,
        "overhead_pv_us": 0,
        "overhead_up_us": coef["step"],
        "overhead_transfer_us": 0,
        "overhead_merge_us": 0,
        "item_overhead_us": coef["item"],
        "call_overhead_us": coef["call"],
        "separate_pass_overhead_us": coef["call"],
        "sources": {
            "method": f"scripts/sim_fit_cpu.py fit --isa {ISA}: weighted least squares (relative "
            "residuals, non-negative) of the step model in that script to mla bench --threads 1 "
            f"--isa {ISA} times (fastest repetition over the runs in "
            f"docs/sim/measure/{MACHINE}-{ISA}/run*/fit_*.json, made by ISA={ISA} "
            "scripts/sim_measure_cpu.sh fit): b 1/4, k 512/2048/4096, 64/128 heads, q_len 2, "
            "chunk 1/2/4, up spill/resident, int8 and bf16 caches.",
            "matrix_int8_ops_per_s": "fitted per row-key cost of the int8 kernel, less SM and the "
            "bf16 rope product, over its 2048 int8 ops per row and key (QK_nope + PV).",
            "matrix_bf16_flops_per_s": "fitted per row-key cost of the bf16 kernel, less SM, over "
            "its 2176 flops per row and key (QK 576 + PV 512, multiply-add = 2).",
            "vector_ops_per_s": "nominal: fp32 FMA ceiling of one thread, "
            + os.path.relpath(CEILINGS, ROOT) + " (bench/roofline, this machine); SM and UP costs "
            "are expressed in these operations.",
            "sm_ops_per_element": "DESIGN §7: the softmax stage is ~5% of the time; 5% of the fitted "
            "bf16 per row-key cost (on a shared unit only the sum with the matrix stages matters).",
            "up_ops_per_element": "fitted cost per query row and step (the accumulator update) / 512.",
            "merge_ops_per_element": "assumption (no split-KV plan occurs at 128 heads on 1-2 "
            "workers of the seed grid): 3 operations per partial element.",
            "kv_read_bytes_per_s": "fitted cost per key (independent of the rows): cache bytes per "
            "token (int8 640, bf16 1152) / fitted cost.",
            "ws_read_bytes_per_s": "fitted cost per row and step of up=spill (2 KiB out and back).",
            "ws_write_bytes_per_s": "as ws_read_bytes_per_s.",
            "sync_latency_us": "0: one core hands nothing over between stages.",
            "overhead_qk_us": "0: the fixed cost of a step is fitted as one figure (overhead_up_us).",
            "overhead_sm_us": "0: see overhead_qk_us.",
            "overhead_pv_us": "0: see overhead_qk_us.",
            "overhead_up_us": "fitted fixed cost per step.",
            "overhead_transfer_us": "0: see overhead_qk_us.",
            "overhead_merge_us": "0: assumption, see merge_ops_per_element.",
            "item_overhead_us": "fitted fixed cost per work item.",
            "call_overhead_us": "fitted fixed cost per decode call (query conversion, planning, "
            "thread pool).",
            "separate_pass_overhead_us": "assumption: one more thread-pool dispatch, taken equal to "
            "call_overhead_us.",
            "kv_tile": "kKvTile = 64 (include/mla/attention.h).",
            "scheduler": "planner: the CPU threads run mla::make_plan's items.",
            "default_chunk": "mla bench's default --chunk.",
            "default_cores": "this machine's 2 cores.",
            "shared_unit": "a CPU core runs matrix and vector stages serially.",
            "vector_units": "one: the core itself.",
            "workspace_transfers": "false: S, P and lo stay in the core's L1/L2 scratch.",
            "two_stage_qk_sync": "no effect on a shared unit.",
            "buffers": "no effect on a shared unit (nothing runs ahead).",
            "cube_preload": "no effect on a shared unit.",
        },
        "fit": {
            "coefficients_us": coef,
            "features": "a_*: per row x key; kv: per cache byte; up: per row x step; step: per "
            "step; spill: per row x step after the first; item: per work item; call: per call",
            "rows": len(data),
            "rows_measured": measured,
            "rows_dropped_as_disturbed": dropped,
            "rms_relative_residual": rms,
            "worst_relative_residual": worst[0],
            "worst_row": " ".join(worst[1]),
            "runs": sorted({os.path.relpath(os.path.dirname(p), ROOT)
                            for p in glob.glob(os.path.join(MEASURE, "run*", "fit_*.json"))}),
        },
    }
    out = os.path.join(ROOT, "profiles", NAME + ".json")
    with open(out, "w") as f:
        json.dump(prof, f, indent=2)
        f.write("\n")
    print(f"dropped {len(dropped)} of {measured} rows as disturbed (> {TRIM:.0%} slower than the fit)")
    print(f"wrote {out}: {len(data)} rows, rms residual {rms:.3f}, worst {worst[0]:+.3f} "
          f"({' '.join(worst[1])})")
    for n in NAMES:
        print(f"  {n:7s} {coef[n]:.4g} us")


def predict(kv, c):
    """mla sim --profile NAME --grid seed: {row name: (old_us, new_us)}."""
    tmp = os.path.join("/tmp", f"sim_check_{os.getpid()}.json")
    subprocess.run([os.path.join(ROOT, "build", "mla"), "sim", "--profile",
                    os.path.join(ROOT, "profiles", NAME + ".json"), "--grid", "seed", "--c", str(c),
                    "--kv-dtype", kv, "--chunk", "4", "--json", tmp],
                   check=True, stdout=subprocess.DEVNULL)
    rows = json.load(open(tmp))["rows"]
    os.remove(tmp)
    return {f"b{r['b']}_k{r['k']}_c{r['c']}": (r["old_us"], r["new_us"]) for r in rows}


def table(title, measured):
    """measured: {(kv, c): {row: (old_us, new_us)}}. Prints a markdown table; returns the errors."""
    errors = []
    print(f"\n{title}\n")
    print("| row | cache | old measured us | old predicted us | error | new measured us | "
          "new predicted us | error |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    flag = lambda e: f"{100 * e:+.1f}%" + (" **" if abs(e) > 0.15 else "")
    for (kv, c), rows in measured.items():
        sim = predict(kv, c)
        for name, (mo, mn) in rows.items():
            po, pn = sim[name]
            eo, en = po / mo - 1, pn / mn - 1
            errors += [eo, en]
            print(f"| {name} | {kv} | {mo:.0f} | {po:.0f} | {flag(eo)} | {mn:.0f} | {pn:.0f} | "
                  f"{flag(en)} |")
    inside = sum(abs(e) <= 0.15 for e in errors)
    print(f"\n{inside} of {len(errors)} times within 15%; largest error "
          f"{100 * max(map(abs, errors)):.1f}% (** = outside 15%)")
    return errors


def predict_chunk(kv, b, k, c, chunk):
    """mla sim --profile NAME, one shape, up resident, reduction last: predicted us."""
    tmp = os.path.join("/tmp", f"sim_check_{os.getpid()}.json")
    subprocess.run([os.path.join(ROOT, "build", "mla"), "sim", "--profile",
                    os.path.join(ROOT, "profiles", NAME + ".json"), "--b", str(b), "--k", str(k),
                    "--c", str(c), "--kv-dtype", kv, "--chunk", str(chunk), "--up", "resident",
                    "--reduction", "last", "--json", tmp], check=True, stdout=subprocess.DEVNULL)
    t = json.load(open(tmp))["variants"][0]["predicted_us"]
    os.remove(tmp)
    return t


def chunk_table():
    """The chunk 1/2/4 rows (chunk_*.json, 2 threads): error of each and the winner."""
    best = fastest("chunk_*.json")
    meas = {}  # (kv, row) -> {chunk: us}
    for (fname, row, var), t in best.items():
        _, kv, pair = os.path.splitext(fname)[0].split("_")
        lo, hi = pair.split("v")
        chunk = int(lo if var == "old" else hi)
        d = meas.setdefault((kv, row), {})
        d[chunk] = min(d.get(chunk, math.inf), t)
    if not meas:
        return []
    print(f"\nChunk 1/2/4 at 2 threads, up resident (chunk_*.json; fastest repetition)\n")
    print("| row | cache | chunk 1 measured / predicted us | chunk 2 | chunk 4 | winner measured "
          "/ predicted |")
    print("| --- | --- | --- | --- | --- | --- |")
    errors, right, rows = [], 0, 0
    for (kv, row), d in sorted(meas.items()):
        b, k = int(row.split("_")[0][1:]), int(row.split("_")[1][1:])
        c = int(row.split("_")[2][1:])
        cells, pred = [], {}
        for chunk in (1, 2, 4):
            p = predict_chunk(kv, b, k, c, chunk)
            pred[chunk] = p
            e = p / d[chunk] - 1
            errors.append(e)
            cells.append(f"{d[chunk]:.0f} / {p:.0f} ({100 * e:+.0f}%{' **' if abs(e) > 0.20 else ''})")
        wm, wp = min(d, key=d.get), min(pred, key=pred.get)
        right += wm == wp
        rows += 1
        print(f"| {row} | {kv} | {' | '.join(cells)} | {wm} / {wp}{'' if wm == wp else ' **'} |")
    inside = sum(abs(e) <= 0.20 for e in errors)
    print(f"\n{inside} of {len(errors)} times within 20%; largest error "
          f"{100 * max(map(abs, errors)):.1f}%; winner right on {right} of {rows} rows")
    return errors


def check():
    # This machine's runs (scripts/sim_measure_cpu.sh grid / chunk): fastest repetition over runs.
    best = fastest("grid_*.json")
    measured = {}
    for (fname, row, var), t in best.items():
        _, kv, c = os.path.splitext(fname)[0].split("_")
        old_new = measured.setdefault((kv, int(c[1:])), {}).setdefault(row, [0, 0])
        old_new[0 if var == "old" else 1] = t
    if measured:
        table(f"Seed grid, measured by ISA={ISA} scripts/sim_measure_cpu.sh grid "
              f"({os.path.relpath(MEASURE, ROOT)}/run*/; the fastest repetition over the runs)",
              measured)
    chunk_table()


if __name__ == "__main__":
    {"fit": fit, "check": check}[sys.argv[1] if len(sys.argv) > 1 else "fit"]()
