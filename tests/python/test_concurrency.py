"""Decodes on different caches run at once: the binding locks per object (a LatentCache, a Layer, a
schedule), not per process. Each test also checks that what ran concurrently equals what runs
alone, bit for bit."""

from __future__ import annotations

import threading
import time
import zlib

import numpy as np

import mla
from mla_ref import BF16, D, seed_rng


def rng_for(name):
    return seed_rng(name, zlib.crc32(name.encode()))


def filled_cache(rng, tokens):
    cache = mla.LatentCache(num_blocks=(tokens + 63) // 64, block_size=64, dtype="bf16")
    s = cache.add_sequence()
    cache.append(s, rng.standard_normal((tokens, D)).astype(np.float32))
    return cache, cache.block_table([s]), cache.seq_lens([s])


def decode(q, cache, bt, sl, threads=1):
    return mla.flash_mla_with_kvcache(q, cache, bt, sl, 512, None, causal=True, threads=threads)


def test_short_decodes_finish_inside_a_long_decode_on_another_cache():
    rng, seed = rng_for("concurrent")
    # The long call: every batch row reads the one 16384-token sequence (the rows share its block
    # table), so its length grows with the batch and not the memory. Sized to last about 0.5 s.
    long_cache, bt, sl = filled_cache(rng, 16384)
    q1 = rng.standard_normal((1, 1, 128, D)).astype(BF16)
    decode(q1, long_cache, bt, sl)  # the first call pays for page faults and the worker pool
    t0 = time.perf_counter()
    decode(q1, long_cache, bt, sl)
    one = time.perf_counter() - t0
    batch = int(min(256, max(1, np.ceil(0.5 / max(one, 1e-4)))))
    q_long = rng.standard_normal((batch, 1, 128, D)).astype(BF16)
    bt_long, sl_long = np.repeat(bt, batch, axis=0), np.repeat(sl, batch)
    # The short calls: another cache, a fraction of a millisecond each.
    short_cache, bt_s, sl_s = filled_cache(rng, 256)
    q_short = rng.standard_normal((1, 1, 16, D)).astype(BF16)

    want_long = decode(q_long, long_cache, bt_long, sl_long)
    want_short = decode(q_short, short_cache, bt_s, sl_s)

    span, got_long, shorts, started = [], [], [], threading.Event()

    def long_call():
        started.set()
        t = time.perf_counter()
        got_long.append(decode(q_long, long_cache, bt_long, sl_long))
        span.extend([t, time.perf_counter()])

    t = threading.Thread(target=long_call)
    t.start()
    started.wait()
    # Short decodes one after another until the long one has returned, each with its start and end.
    while t.is_alive():
        a = time.perf_counter()
        r = decode(q_short, short_cache, bt_s, sl_s)
        shorts.append((a, time.perf_counter(), r))
    t.join()
    begin, end = span
    # With one lock for every decode, the short calls would stop while the long one held it: one
    # of them would wait out the whole long call, leaving a gap as long as it between the ends of
    # consecutive short calls. Run at once, they end every fraction of a millisecond; half the
    # long call allows a loaded machine, and the long call's Python part (before its kernels
    # start) is far shorter than the other half.
    marks = [begin] + sorted(s[1] for s in shorts if begin <= s[1] <= end) + [end]
    gap = max(b - a for a, b in zip(marks, marks[1:]))
    assert end - begin > 0.2, f"the long decode took {end - begin:.3f} s (batch {batch}): too short to show anything"
    assert gap < 0.5 * (end - begin) and len(marks) > 12, (
        f"short decodes on another cache stopped for {gap:.3f} s of a {end - begin:.3f} s decode ({len(marks) - 2} "
        f"ended during it; batch {batch}, seed {seed}): decodes of different caches do not run at once")
    for name, got, want in [("out", got_long[0][0], want_long[0]), ("lse", got_long[0][1], want_long[1])]:
        assert np.array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32), equal_nan=True), \
            f"long decode's {name} differs from the same decode alone (seed {seed})"
    for _, _, (o, lse) in shorts:
        assert np.array_equal(np.asarray(o, np.float32), np.asarray(want_short[0], np.float32))
        assert np.array_equal(lse, want_short[1])


def test_two_threads_with_two_workers_each_agree_with_one_thread_alone():
    # threads=2 in both: one of them finds the process's worker pool busy and runs its workers'
    # items on its own thread; the split-KV merges must come out the same.
    rng, seed = rng_for("concurrent-pool")
    cases = []
    for _ in range(2):
        cache, bt, sl = filled_cache(rng, 3000)
        q = rng.standard_normal((1, 2, 16, D)).astype(BF16)
        cases.append((q, cache, bt, sl))
    want = [decode(*c, threads=2) for c in cases]
    got, errors = [[], []], []

    def loop(i):
        try:
            for _ in range(20):
                got[i].append(decode(*cases[i], threads=2))
        except Exception as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i in range(2):
        for o, lse in got[i]:
            assert np.array_equal(np.asarray(o, np.float32), np.asarray(want[i][0], np.float32)), f"seed {seed}"
            assert np.array_equal(lse, want[i][1]), f"seed {seed}"


def test_appends_to_a_cache_beside_decodes_of_it():
    # A thread appends to another sequence of the cache that the main thread decodes: each append
    # waits for the decode under way (exclusive lock against the decodes' shared one), and the
    # decoded sequence's blocks are never touched, so every decode gives the same result.
    rng, seed = rng_for("concurrent-append")
    cache = mla.LatentCache(num_blocks=16 + 64, block_size=64, dtype="bf16")
    s = cache.add_sequence()
    cache.append(s, rng.standard_normal((1024, D)).astype(np.float32))
    bt, sl = cache.block_table([s]), cache.seq_lens([s])
    q = rng.standard_normal((1, 1, 16, D)).astype(BF16)
    want = decode(q, cache, bt, sl)
    s2 = cache.add_sequence()
    tokens = rng.standard_normal((32, D)).astype(np.float32)
    stop, errors, appended = threading.Event(), [], [0]

    def writer():
        try:
            while not stop.is_set() and cache.free_blocks > 1:
                cache.append(s2, tokens)
                appended[0] += 1
        except Exception as e:  # reported by the main thread
            errors.append(e)

    w = threading.Thread(target=writer)
    w.start()
    try:
        for _ in range(50):
            o, lse = decode(q, cache, bt, sl)
            assert np.array_equal(np.asarray(o, np.float32), np.asarray(want[0], np.float32)), f"seed {seed}"
            assert np.array_equal(lse, want[1]), f"seed {seed}"
    finally:
        stop.set()
        w.join()
    assert not errors, errors
    assert appended[0] > 0
