"""The Python call's overhead over the C++ call, and what an array k_cache costs.

    .venv/bin/python bench/python/overhead.py [--heads 16 --context 512 --iters 2000 --threads 1]

Times, interleaved in rounds so machine noise hits both alike (median of rounds):
  C++   mla::decode called in a C++ loop (mla._mla.time_decode_cpp), on a LatentCache, with
        one DecodePlan made first (as the Python calls reuse their schedule's);
  py    mla.flash_mla_with_kvcache on the same LatentCache (zero-copy path), schedule reused;
  array the same call with k_cache a NumPy bf16 array, read in place through a CacheView; the
        bytes the process grew by during one call on a 118 MB k_cache show it (VmHWM).
Goal (issue 9): py - C++ under 10 us at batch 1, 16 heads, 512 cached tokens, s_q 1. The
overhead is also measured on the same call with cache_seqlens 0 (same shapes, no kernel work),
which the kernel's run-to-run noise does not swamp.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time

import ml_dtypes
import numpy as np

import mla
from mla import _mla


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    bs = 64
    cache = mla.LatentCache(num_blocks=-(-a.context // bs), block_size=bs, dtype="bf16")
    s = cache.add_sequence()
    cache.append(s, rng.standard_normal((a.context, 576)).astype(np.float32))
    bt, sl = cache.block_table([s]), cache.seq_lens([s])
    q = rng.standard_normal((1, 1, a.heads, 576)).astype(ml_dtypes.bfloat16)
    scale = 576 ** -0.5
    sched, _ = mla.get_mla_metadata(threads=a.threads)   # one decode step's plan, reused
    sched0, _ = mla.get_mla_metadata(threads=a.threads)  # the empty step's (other lengths)
    k_arr = cache.export_array().astype(ml_dtypes.bfloat16)[:, :, None, :]

    def py_loop(k, n):
        t0 = time.perf_counter()
        for _ in range(n):
            mla.flash_mla_with_kvcache(q, k, bt, sl, 512, sched, softmax_scale=scale)
        return (time.perf_counter() - t0) / n

    def py_empty(n):
        t0 = time.perf_counter()
        for _ in range(n):
            mla.flash_mla_with_kvcache(q, cache, bt, sl0, 512, sched0, softmax_scale=scale)
        return (time.perf_counter() - t0) / n

    # The binding's work does not depend on the context length, so the same call with
    # cache_seqlens 0 (same shapes, the kernel does nothing) gives the overhead without the
    # kernel's run-to-run noise, which on a shared machine is larger than the overhead itself.
    sl0 = np.zeros_like(sl)
    py_loop(cache, 100)
    cpp, py, arr, cpp0, py0 = [], [], [], [], []
    for _ in range(a.rounds):
        cpp.append(_mla.time_decode_cpp(q.view(np.uint16), cache._c, bt, sl, scale, a.threads, a.iters))
        py.append(py_loop(cache, a.iters))
        arr.append(py_loop(k_arr, max(a.iters // 10, 10)))
        cpp0.append(_mla.time_decode_cpp(q.view(np.uint16), cache._c, bt, sl0, scale, a.threads, a.iters * 5))
        py0.append(py_empty(a.iters * 5))

    def hwm():
        return int(re.search(r"VmHWM:\s+(\d+) kB", open("/proc/self/status").read()).group(1)) * 1024

    big_blocks = 1600  # 118 MB of bf16 cache: the copy shows in resident memory
    big = np.full((big_blocks, bs, 1, 576), 0.5, ml_dtypes.bfloat16)
    big_bt = np.arange(big_blocks, dtype=np.int32)[None]
    big_sl = np.array([big_blocks * bs], np.int32)
    before = hwm()
    mla.flash_mla_with_kvcache(q, big, big_bt, big_sl, 512, None, threads=a.threads)
    grew = hwm() - before

    med = statistics.median
    lo_hi = lambda v: f"{min(v) * 1e6:.2f}..{max(v) * 1e6:.2f}"  # noqa: E731
    print(f"batch 1, heads {a.heads}, context {a.context}, s_q 1, bf16 cache, threads {a.threads}; "
          f"{a.rounds} rounds of {a.iters} calls, median (min..max) in us")
    print(f"  C++ call (mla::decode)              {med(cpp) * 1e6:9.2f}  ({lo_hi(cpp)})")
    print(f"  Python call, LatentCache (0 copies) {med(py) * 1e6:9.2f}  ({lo_hi(py)})")
    print(f"  overhead, difference of medians     {(med(py) - med(cpp)) * 1e6:9.2f}  (goal < 10)")
    print(f"  overhead, same call with no tokens  {(min(py0) - min(cpp0)) * 1e6:9.2f}  "
          f"(min of rounds: Python {min(py0) * 1e6:.2f}, C++ {min(cpp0) * 1e6:.2f})")
    print(f"  Python call, NumPy k_cache          {med(arr) * 1e6:9.2f}  ({lo_hi(arr)})")
    print(f"  NumPy k_cache of {big.nbytes / 1e6:.0f} MB: the process grew by {grew / 1e6:.0f} MB during one call "
          f"({grew / big.nbytes:.2f} x k_cache: {'copied' if grew > big.nbytes / 2 else 'read in place'})")


if __name__ == "__main__":
    main()
