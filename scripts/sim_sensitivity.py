#!/usr/bin/env python3
"""The sensitivity table of docs/SIM.md: which parameter of a profile flips which rows of the seed grid.

    python3 scripts/sim_sensitivity.py [--profile ascend-910b] [--mla build/mla] [--out FILE.md]

For each numeric parameter of the profile (and each structural choice: reading, flags, slots,
split, reduction) the script runs `mla sim --grid seed` with that one parameter changed (x0.5 and x2
for rates, costs and latencies; the other value for choices) and prints, against the profile as it
is: the grid average, the correlation of the 21 old/new ratios with the seed's, the rows gaining,
the k group that gains most, the chunk-2 gain at b1_k2048 / b1_k4096 (old UP and reduction, as the
seed's section (I) compares) and the rows whose sign (gain or loss) flips.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCALED = ["matrix_int8_ops_per_s", "matrix_bf16_flops_per_s", "vector_ops_per_s",
          "sm_ops_per_element", "up_ops_per_element", "up_ops_per_extra_block",
          "merge_ops_per_element", "kv_read_bytes_per_s", "hbm_bytes_per_s",
          "ws_read_bytes_per_s", "ws_write_bytes_per_s", "sync_latency_us", "overhead_qk_us",
          "overhead_sm_us", "overhead_pv_us", "overhead_up_us", "overhead_transfer_us",
          "overhead_merge_us", "item_overhead_us", "call_overhead_us",
          "separate_pass_overhead_us"]
CHOICES = [("chunk_reading", "merged"), ("flags", "chunk"), ("s_slots", 1), ("two_stage_qk_sync", False)]
ARGS = [("--split", "none"), ("--split", "round=512"), ("--block", "512"),
        ("--reduction", "separate"), ("--reduction", "last"), ("--chunk", "4")]


def run(mla, profile_json, extra=()):
    with tempfile.TemporaryDirectory() as d:
        prof = os.path.join(d, "p.json")
        with open(prof, "w") as f:
            json.dump(profile_json, f)
        out = os.path.join(d, "g.json")
        subprocess.run([mla, "sim", "--grid", "seed", "--profile", prof, "--json", out, *extra],
                       check=True, stdout=subprocess.DEVNULL)
        grid = json.load(open(out))
        chunk = []
        # The work split and block size apply to the chunk rows too; the reduction and chunk do not.
        shape_args = [x for i in range(0, len(extra), 2) if extra[i] in ("--split", "--block")
                      for x in extra[i:i + 2]]
        for k in (2048, 4096):
            cj = os.path.join(d, f"c{k}.json")
            subprocess.run([mla, "sim", "--profile", prof, "--b", "1", "--k", str(k), "--c", "24",
                            "--chunk", "1,2", "--up", "spill", "--reduction", "separate",
                            "--json", cj, *shape_args],
                           check=True, stdout=subprocess.DEVNULL)
            v = json.load(open(cj))["variants"]
            chunk.append(v[0]["predicted_us"] / v[1]["predicted_us"] - 1)
    return grid, chunk


def summary(grid, chunk):
    rows = grid["rows"]
    r = [x["speedup"] for x in rows]
    s = [x["seed"] for x in rows]
    n = len(r)
    ma, mb = sum(r) / n, sum(s) / n
    cov = sum((a - ma) * (b - mb) for a, b in zip(r, s))
    va = sum((a - ma) ** 2 for a in r)
    vb = sum((b - mb) ** 2 for b in s)
    corr = cov / (va * vb) ** 0.5 if va > 0 else 0.0
    by_k = [sum(r[i::3]) / (n / 3) for i in range(3)]
    best_k = (512, 2048, 4096)[by_k.index(max(by_k))]
    return {"avg": ma, "corr": corr, "gaining": sum(1 for x in r if x > 1), "best_k": best_k,
            "chunk": chunk, "signs": [x > 1 for x in r],
            "names": [f"b{x['b']}_k{x['k']}" for x in rows]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="ascend-910b")
    ap.add_argument("--mla", default=os.path.join(ROOT, "build", "mla"))
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    path = a.profile if a.profile.endswith(".json") else os.path.join(ROOT, "profiles", a.profile + ".json")
    base = json.load(open(path))
    ref = summary(*run(a.mla, base))
    lines = ["| change | grid avg | corr | rows gaining | best k | chunk 2 b1_k2048 / b1_k4096 | rows flipped |",
             "| --- | --- | --- | --- | --- | --- | --- |"]

    def row(label, s):
        flips = [nm for nm, x, y in zip(ref["names"], ref["signs"], s["signs"]) if x != y]
        lines.append(f"| {label} | {s['avg']:.3f} | {s['corr']:+.2f} | {s['gaining']}/21 | {s['best_k']} | "
                     f"{100 * s['chunk'][0]:+.1f}% / {100 * s['chunk'][1]:+.1f}% | "
                     f"{', '.join(flips) if flips else '-'} |")

    row("(the profile as it is)", ref)
    for key in SCALED:
        if key not in base or not base[key]:
            continue
        for f in (0.5, 2.0):
            p = dict(base)
            p[key] = base[key] * f
            row(f"{key} x{f:g}", summary(*run(a.mla, p)))
    for key, val in CHOICES:
        p = dict(base)
        p[key] = val
        p.setdefault("sources", {})[key] = "sensitivity"
        row(f"{key} = {json.dumps(val)}", summary(*run(a.mla, p)))
    for opt, val in ARGS:
        row(f"{opt} {val}", summary(*run(a.mla, base, (opt, val))))
    text = "\n".join(lines) + "\n"
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
