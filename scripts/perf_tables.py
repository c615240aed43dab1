#!/usr/bin/env python3
"""Prints the markdown tables of docs/PERF.md from the JSON files scripts/perf.sh writes.

Usage: python3 scripts/perf_tables.py [docs/perf] > /tmp/tables.md
Only the standard library; every figure comes from a JSON file, none is typed in by hand.
"""
import json
import os
import statistics
import sys

DIR = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "docs", "perf")


def load(name):
    with open(os.path.join(DIR, name + ".json")) as f:
        return json.load(f)


def grid_table(name, title):
    d = load(name)
    rows = d["rows"]
    out = [f"#### {title}", "", f"`{cmd(name)}`", "",
           "| row | old us | new us | old/new | GFLOP/s | floor fraction (old -> new) | BLAS us | new/BLAS | spread old/new | check |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        blas = f"{r['baseline_us']:.0f}" if r.get("baseline_us") else "-"
        nb = f"{r['new_us'] / r['baseline_us']:.3f}" if r.get("baseline_us") else "-"
        out.append(f"| {r['name']} | {r['old_us']:.0f} | {r['new_us']:.0f} | {r['speedup']:.3f} | "
                   f"{r['gflops']:.0f} | {r['old_ceiling_fraction']:.2f} -> {r['ceiling_fraction']:.2f} | {blas} | {nb} | "
                   f"{100 * r['old_spread']:.0f}% / {100 * r['new_spread']:.0f}% | {r['check']} |")
    fr = [r["ceiling_fraction"] for r in rows]
    out.append(f"| **AVG** | | | **{d['avg_speedup']:.3f}** | | min {min(fr):.2f}, median "
               f"{statistics.median(fr):.2f}, max {max(fr):.2f} | | | | |")
    out.append("")
    return "\n".join(out)


def variant_table(name, title):
    d = load(name)
    v = d["variants"]
    out = [f"#### {title}", "", f"`{cmd(name)}`  (old = `{v['old']['options']}`, new = `{v['new']['options']}`)", "",
           "| row | old us | new us | old/new | floor fraction (old -> new) | spread old/new | check |",
           "|---|---:|---:|---:|---:|---:|---|"]
    for r in d["rows"]:
        out.append(f"| {r['name']} | {r['old_us']:.0f} | {r['new_us']:.0f} | {r['speedup']:.3f} | "
                   f"{r['old_ceiling_fraction']:.2f} -> {r['ceiling_fraction']:.2f} | "
                   f"{100 * r['old_spread']:.0f}% / {100 * r['new_spread']:.0f}% | {r['check']} |")
    out.append(f"| **AVG** | | | **{d['avg_speedup']:.3f}** | | | |")
    out.append("")
    return "\n".join(out)


def threads_table(name, title):
    rows = load(name)["rows"]
    by = {(r["b"], r["k"], r["c"]): r for r in rows}
    out = [f"#### {title}", "", f"`{cmd(name)}`", "",
           "| shape | 1 thread us | 2 threads us | speedup | floor fraction c1 / c2 | spread c1 / c2 |",
           "|---|---:|---:|---:|---:|---:|"]
    for (b, k, c), r in sorted(by.items()):
        if c != 1 or (b, k, 2) not in by:
            continue
        r2 = by[(b, k, 2)]
        out.append(f"| b{b}_k{k} | {r['new_us']:.0f} | {r2['new_us']:.0f} | {r['new_us'] / r2['new_us']:.2f} | "
                   f"{r['ceiling_fraction']:.2f} / {r2['ceiling_fraction']:.2f} | "
                   f"{100 * r['new_spread']:.0f}% / {100 * r2['new_spread']:.0f}% |")
    out.append("")
    return "\n".join(out)


def ratio_table(a, b, title):
    ra, rb = load(a)["rows"], load(b)["rows"]
    ratios = [y["new_us"] / x["new_us"] for x, y in zip(ra, rb)]
    cells = " | ".join(f"{x['name']} {q:.2f}" for x, q in zip(ra, ratios))
    return (f"#### {title}\n\nbf16 time / int8 time per row (from the two tables above): min {min(ratios):.2f}, "
            f"median {statistics.median(ratios):.2f}, max {max(ratios):.2f}.\n\n{cells}\n")


def ceilings_table():
    d = load("ceilings")
    out = [f"`build/roofline --out docs/perf/ceilings.json` on {d.get('cpu', '?')}", "",
           "| threads | limit | read mem GB/s | read L3 GB/s | read L2 GB/s | fp32 FMA GFLOP/s | bf16 dot GFLOP/s | int8 dot GOP/s |",
           "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for c in d["ceilings"]:
        out.append(f"| {c['threads']} | {c.get('limit', 'native')} | {c['read_bw_mem_gbs']:.1f} | {c['read_bw_l3_gbs']:.1f} | {c['read_bw_l2_gbs']:.1f} | "
                   f"{c['fp32_fma_gflops']:.1f} | {c['bf16_dot_gflops']:.1f} | {c['int8_dot_gops']:.1f} |")
    c = d["ceilings"][0]
    out.append(f"\nInstructions: fp32 {c['fp32_isa']}, bf16 {c['bf16_isa']}, int8 {c['int8_isa']}, reads {c.get('read_isa', '?')}.\n")
    return "\n".join(out)


def cmd(name):
    with open(os.path.join(DIR, name + ".txt")) as f:
        first = f.readline().strip()
    return first[3:] if first.startswith("== ") else first


print(ceilings_table())
print(grid_table("int8_h128", "int8 cache, 128 heads, q_len 2 (token scales)"))
print(grid_table("bf16_h128", "bf16 cache, 128 heads, q_len 2"))
print(ratio_table("int8_h128", "bf16_h128", "int8 over bf16"))
print(grid_table("fp16_h128", "fp16 cache, 128 heads, q_len 2"))
print(grid_table("int8_h16", "int8 cache, 16 heads, q_len 1"))
print(grid_table("bf16_h16", "bf16 cache, 16 heads, q_len 1"))
print(threads_table("threads_int8", "Thread scaling, int8, 128 heads, q_len 2"))
print(threads_table("threads_bf16", "Thread scaling, bf16, 128 heads, q_len 2"))
print(variant_table("chunk1_vs_4", "Chunk 1 vs 4 (int8)"))
print(variant_table("chunk2_vs_4", "Chunk 2 vs 4 (int8)"))
print(variant_table("up_spill_vs_resident", "UP: accumulator spilled every chunk vs resident (int8)"))
print(variant_table("red_separate_vs_last", "Reduction: separate pass vs last worker (int8, 16 heads, q_len 1: KV splits)"))
# The AVX2 kernels (--isa avx2), where perf.sh has run them.
for name, title in [("avx2_int8_h128", "AVX2 kernel, int8 cache, 128 heads, q_len 2 (read the AVX2 section first)"),
                    ("avx2_bf16_h128", "AVX2 kernel, bf16 cache, 128 heads, q_len 2 (read the AVX2 section first)"),
                    ("avx2_int8_h16", "AVX2 kernel, int8 cache, 16 heads, q_len 1 (read the AVX2 section first)"),
                    ("avx2_bf16_h16", "AVX2 kernel, bf16 cache, 16 heads, q_len 1 (read the AVX2 section first)")]:
    if os.path.exists(os.path.join(DIR, name + ".json")):
        print(grid_table(name, title))
