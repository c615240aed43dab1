"""mla's FlashMLA interface against a float64 NumPy reference, with inputs built the way FlashMLA's
dense-decoding test builds them (see mla_ref.py). MLA_TEST_SEED repeats a failing case."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import mla
from mla_ref import BF16, D, SENTINEL, check_design, check_design_int8, check_flashmla, make_case, reference, seed_rng

ROOT = Path(__file__).resolve().parents[2]


def rng_for(name):
    return seed_rng(name, zlib.crc32(name.encode()))


def run(case, sched=None, **kw):
    if sched is None:
        sched, _ = mla.get_mla_metadata()
    return mla.flash_mla_with_kvcache(case.q, case.k_cache, case.block_table, case.cache_seqlens, 512, sched,
                                      causal=case.causal, **kw)


def check_case(case, out, lse, **ref_kw):
    ro, rl = reference(case.q, case.k_cache, case.block_table, case.cache_seqlens, case.causal, **ref_kw)
    assert out.dtype == case.q.dtype and lse.dtype == np.float32
    check_flashmla(out, ro, "out", case.seed)
    check_flashmla(lse, rl, "lse", case.seed)


# (s_q, h_q, h_kv): every head count of the issue at s_q 1/2/4 with one latent head (MLA), and
# h_kv = 3 for the head counts it divides.
SHAPES = [(s_q, h, 1) for h in (1, 3, 9, 63, 64, 126, 128) for s_q in (1, 2, 4)] + \
         [(s_q, h, 3) for h in (3, 9, 63, 126) for s_q in (1, 2)]


@pytest.mark.parametrize("s_q,h_q,h_kv", SHAPES)
def test_bf16_against_reference(s_q, h_q, h_kv):
    rng, seed = rng_for(f"bf16{s_q},{h_q},{h_kv}")
    case = make_case(rng, seed, b=3, s_q=s_q, mean_sk=1024, h_q=h_q, h_kv=h_kv, varlen=True, dtype=BF16,
                     causal=s_q > 1, zero_len=(1,))
    out, lse = run(case)
    check_case(case, out, lse)


@pytest.mark.parametrize("s_q,h_q,h_kv,causal,block_size", [
    (1, 16, 1, False, 64), (2, 128, 1, True, 64), (4, 64, 1, False, 16), (2, 9, 3, True, 32), (1, 128, 1, False, 1)])
def test_fp16_against_reference(s_q, h_q, h_kv, causal, block_size):
    rng, seed = rng_for(f"fp16{s_q},{h_q},{h_kv},{block_size}")
    case = make_case(rng, seed, b=4, s_q=s_q, mean_sk=1024, h_q=h_q, h_kv=h_kv, varlen=True, dtype=np.float16,
                     causal=causal, block_size=block_size, zero_len=(2,))
    out, lse = run(case)
    check_case(case, out, lse)


@pytest.mark.parametrize("dtype", [BF16, np.float16])
def test_float32_query_gives_float32_output(dtype):
    rng, seed = rng_for(f"f32q{np.dtype(dtype).name}")
    case = make_case(rng, seed, b=2, s_q=2, mean_sk=300, h_q=16, h_kv=1, varlen=False, dtype=dtype, causal=True)
    q32 = case.q.astype(np.float32) + 0  # exactly the bf16 values, as float32
    out, lse = mla.flash_mla_with_kvcache(q32, case.k_cache, case.block_table, case.cache_seqlens, 512, None,
                                          causal=True)
    assert out.dtype == np.float32
    check_case(case, out.astype(dtype), lse)  # the same inputs the 16-bit reference sees
    out_bf, _ = run(case)  # the kernel sees the same bf16 query: out is the float32 result rounded
    assert np.array_equal(out.astype(dtype).view(np.uint16), out_bf.view(np.uint16)), f"seed {seed}"


def test_causal_is_ignored_when_s_q_is_1():
    rng, seed = rng_for("causal1")
    case = make_case(rng, seed, b=2, s_q=1, mean_sk=100, h_q=8, h_kv=1, varlen=True, dtype=BF16, causal=True)
    a = run(case)
    case.causal = False
    b = run(case)
    assert np.array_equal(a[0].view(np.uint16), b[0].view(np.uint16)) and np.array_equal(a[1], b[1])


def test_softmax_scale_default_and_explicit():
    rng, seed = rng_for("scale")
    case = make_case(rng, seed, b=2, s_q=1, mean_sk=100, h_q=8, h_kv=1, varlen=True, dtype=BF16, causal=False)
    out, lse = run(case)
    out2, lse2 = run(case, softmax_scale=D ** -0.5)
    assert np.array_equal(lse, lse2)
    out3, lse3 = run(case, softmax_scale=0.1352)  # DeepSeek-V3's: sharper than FlashMLA's default
    ro, rl = reference(case.q, case.k_cache, case.block_table, case.cache_seqlens, False, scale=0.1352)
    check_design(out3, lse3, ro, rl, seed)  # fewer effective keys than FlashMLA's tolerance presumes


def test_q_lens_rows_past_each_sequence_are_padding():
    rng, seed = rng_for("qlens")
    case = make_case(rng, seed, b=3, s_q=4, mean_sk=1024, h_q=16, h_kv=1, varlen=True, dtype=BF16, causal=True)
    q_lens = np.array([4, 1, 3], dtype=np.int32)
    out, lse = run(case, q_lens=q_lens)
    ro, rl = reference(case.q, case.k_cache, case.block_table, case.cache_seqlens, True, q_lens=q_lens)
    check_flashmla(out, ro, "out", seed)
    check_flashmla(lse, rl, "lse", seed)
    assert np.isinf(lse[1, :, 1:]).all() and not np.asarray(out[1, 1:], dtype=np.float32).any()


class DLPackOnly:
    """A DLPack producer that is neither NumPy nor torch."""

    def __init__(self, a):
        self._a = a

    def __dlpack__(self, **kw):
        return self._a.__dlpack__(**kw)

    def __dlpack_device__(self):
        return self._a.__dlpack_device__()

    @property
    def shape(self):
        return self._a.shape


def test_any_dlpack_producer():
    rng, seed = rng_for("dlpack")
    case = make_case(rng, seed, b=2, s_q=2, mean_sk=100, h_q=8, h_kv=1, varlen=True, dtype=np.float16, causal=True)
    out, lse = mla.flash_mla_with_kvcache(DLPackOnly(case.q), DLPackOnly(case.k_cache), DLPackOnly(case.block_table),
                                          DLPackOnly(case.cache_seqlens), 512, None, causal=True)
    assert isinstance(out, np.ndarray)
    check_case(case, out, lse)


def test_strided_inputs_are_copied_not_misread():
    rng, seed = rng_for("strided")
    case = make_case(rng, seed, b=2, s_q=2, mean_sk=100, h_q=8, h_kv=1, varlen=True, dtype=BF16, causal=True)
    q_wide = np.zeros(case.q.shape[:3] + (2 * D,), dtype=BF16)
    q_wide[..., ::2] = case.q
    bt_t = np.ascontiguousarray(case.block_table.T).T  # Fortran order
    out, lse = mla.flash_mla_with_kvcache(q_wide[..., ::2], case.k_cache, bt_t, case.cache_seqlens, 512, None,
                                          causal=True)
    check_case(case, out, lse)


def test_threads_agree():
    rng, seed = rng_for("threads")
    case = make_case(rng, seed, b=2, s_q=2, mean_sk=2000, h_q=16, h_kv=1, varlen=True, dtype=BF16, causal=True)
    o1, l1 = run(case, threads=1)
    o2, l2 = run(case, threads=2)
    check_case(case, o1, l1)
    check_case(case, o2, l2)


# ---- get_mla_metadata --------------------------------------------------------------------------

def test_old_metadata_form_returns_schedule_and_num_splits():
    rng, seed = rng_for("oldmeta")
    case = make_case(rng, seed, b=4, s_q=2, mean_sk=3000, h_q=16, h_kv=1, varlen=True, dtype=BF16, causal=True)
    sched, num_splits = mla.get_mla_metadata(case.cache_seqlens, 2 * 16 // 1, 1, threads=2)
    assert num_splits.dtype == np.int32 and num_splits.shape == (5,)
    assert num_splits[0] == 0 and (np.diff(num_splits) >= 1).all()
    assert sched.plan["num_workers"] == 2 and sched.plan["items"].shape[1] == 6
    for _ in range(2):  # reused, as by every layer of one decode step
        out, lse = mla.flash_mla_with_kvcache(case.q, case.k_cache, case.block_table, case.cache_seqlens, 512,
                                              sched, num_splits, causal=True)
        check_case(case, out, lse)
    assert sched.have_initialized and sched.config.h_q == 16


def test_new_metadata_form_is_filled_by_the_first_call_and_checked_after():
    rng, seed = rng_for("newmeta")
    case = make_case(rng, seed, b=2, s_q=2, mean_sk=100, h_q=16, h_kv=1, varlen=True, dtype=BF16, causal=True)
    sched, none = mla.get_mla_metadata()
    assert none is None and not sched.have_initialized
    run(case, sched)
    assert sched.have_initialized and sched.config.s_q == 2 and sched.plan is not None
    with pytest.raises(ValueError, match="causal"):
        mla.flash_mla_with_kvcache(case.q, case.k_cache, case.block_table, case.cache_seqlens, 512, sched,
                                   causal=False)
    with pytest.raises(ValueError, match="h_q = 16"):
        mla.flash_mla_with_kvcache(case.q[:, :, :8], case.k_cache, case.block_table, case.cache_seqlens, 512,
                                   sched, causal=True)


def test_schedule_plan_is_reused_and_refuses_other_lengths():
    rng, seed = rng_for("reuse")
    case = make_case(rng, seed, b=2, s_q=1, mean_sk=300, h_q=16, h_kv=1, varlen=False, dtype=BF16, causal=False)
    sched, _ = mla.get_mla_metadata()
    o1, l1 = run(case, sched)
    first = sched.plan
    o2, l2 = run(case, sched)  # the second layer of the step: the same plan, the same result
    check_case(case, o1, l1)
    assert np.array_equal(o1.view(np.uint16), o2.view(np.uint16)) and np.array_equal(l1, l2)
    assert all(np.array_equal(first[k], sched.plan[k]) for k in ("worker_offsets", "items", "num_splits"))
    other = case.cache_seqlens.copy()
    other[1] -= 1
    with pytest.raises(ValueError, match=rf"cache_seqlens\[1\] = {case.cache_seqlens[1]}, not {other[1]}"):
        mla.flash_mla_with_kvcache(case.q, case.k_cache, case.block_table, other, 512, sched)
    with pytest.raises(ValueError, match="threads = 1 differs"):
        sched2, _ = mla.get_mla_metadata(threads=2)
        run(case, sched2)
        run(case, sched2, threads=1)


def test_old_metadata_form_checks_the_call():
    sched, _ = mla.get_mla_metadata(np.array([10, 20], dtype=np.int32), 16, 1)
    q = np.ones((2, 1, 8, D), dtype=BF16)
    k = np.ones((1, 64, 1, D), dtype=BF16)
    with pytest.raises(ValueError, match="num_q_tokens_per_head_k = 16"):
        mla.flash_mla_with_kvcache(q, k, np.zeros((2, 1), np.int32), np.array([10, 20], np.int32), 512, sched)


# ---- LatentCache ----------------------------------------------------------------------------------

def fill_latent_cache(rng, cache, lens):
    seqs = [cache.add_sequence() for _ in lens]
    for s, n in zip(seqs, lens):
        for part in np.array_split(np.arange(n), 3):  # appended in pieces, as decode steps do
            if len(part):
                cache.append(s, rng.standard_normal((len(part), D)).astype(np.float32))
    return seqs


@pytest.mark.parametrize("dtype,scale", [("bf16", "token"), ("fp16", "token"), ("int8", "token"),
                                         ("int8", "tensor"), ("int8", "channel"), ("int8", "group32"),
                                         ("int8", "group64"), ("int8", "group128"), ("fp8", "token")])
def test_latent_cache_in_place_of_k_cache(dtype, scale):
    rng, seed = rng_for(f"lc{dtype}{scale}")
    cache = mla.LatentCache(num_blocks=40, block_size=32, dtype=dtype, scale=scale, shuffle_seed=seed + 1)
    if scale != "token":
        cache.calibrate(3 * rng.standard_normal((256, D)).astype(np.float32))
    lens = [300, 0, 77, 2]
    seqs = fill_latent_cache(rng, cache, lens)
    bt = cache.block_table(seqs)
    sl = cache.seq_lens(seqs)
    assert list(sl) == lens
    q = rng.standard_normal((4, 2, 16, D)).astype(np.float16 if dtype == "fp16" else BF16)
    out, lse = mla.flash_mla_with_kvcache(q, cache, bt, sl, 512, None, causal=True, is_fp8_kvcache=dtype == "fp8")
    kv = cache.export_array()[:, :, None, :]  # the content as the kernels see it
    ro, rl = reference(cache.query_values(q), kv, bt, sl, True)  # and the query too
    if dtype == "int8":
        check_design_int8(out, lse, ro, rl, seed)
    else:  # sequences of 2 and 77 tokens: DESIGN §6 (see make_case on FlashMLA's tolerance)
        check_design(out, lse, ro, rl, seed)


def test_latent_cache_api():
    rng, seed = rng_for("lcapi")
    cache = mla.LatentCache(num_blocks=4, block_size=8, dtype="int8")
    s = cache.add_sequence()
    toks = rng.standard_normal((10, D)).astype(np.float32)
    slots = cache.append(s, toks)
    assert slots.dtype == np.int64 and list(slots) == list(cache.slot_mapping(s, range(10)))
    assert cache.free_blocks == 2 and cache.seq_len(s) == 10
    assert cache.block_table([s], min_blocks=4).tolist()[0][2:] == [-1, -1]
    with pytest.raises(ValueError, match="block"):
        cache.append(s, np.zeros((100, D), np.float32))  # out of blocks: refused, nothing changes
    assert cache.seq_len(s) == 10 and cache.free_blocks == 2
    cache.write(slots[:2], toks[5:7])  # vLLM-style slot mapping write
    got = cache.export_array().reshape(-1, D)[slots[:2]]
    assert np.abs(got - toks[5:7]).max() < 0.05 * np.abs(toks).max()
    content = cache.export_int8()
    other = mla.LatentCache(num_blocks=4, block_size=8, dtype="int8")
    other.import_int8(**content)
    assert np.array_equal(other.export_array(), cache.export_array())  # lossless
    with pytest.raises(ValueError, match="slot_mapping\\[0\\] = 99"):
        cache.write(np.array([99], np.int64), toks[:1])
    cache.free(s)
    assert cache.free_blocks == 4
    with pytest.raises(ValueError, match="tensor scales"):
        mla.LatentCache(2, 8, "int8", "tensor").append(0, toks)
    with pytest.raises(ValueError, match="dtype|int8"):
        mla.LatentCache(2, 8, "int4")


# ---- bad inputs ----------------------------------------------------------------------------------

def good():
    q = np.ones((2, 2, 4, D), dtype=BF16)
    k = np.ones((4, 64, 1, D), dtype=BF16)
    bt = np.array([[0, SENTINEL], [1, 2]], dtype=np.int32)
    sl = np.array([10, 100], dtype=np.int32)
    return dict(q=q, k_cache=k, block_table=bt, cache_seqlens=sl, head_dim_v=512)


BAD = [
    ("q", lambda a: a["q"][..., :512], ValueError, r"q.shape = \(2, 2, 4, 512\)"),
    ("q", lambda a: a["q"].astype(np.int32), TypeError, "q has dtype int32"),
    ("q", lambda a: [[1.0]], TypeError, "q is a list"),
    ("k_cache", lambda a: a["k_cache"].astype(np.float32), TypeError, "k_cache has dtype float32"),
    ("k_cache", lambda a: a["k_cache"][:, :, :, :100], ValueError, "k_cache.shape"),
    ("k_cache", lambda a: np.ones((4, 64, 3, D), BF16), ValueError, "num_heads_q = 4 is not a multiple of num_heads_k = 3"),
    ("block_table", lambda a: a["block_table"].astype(np.int64), TypeError, "block_table has dtype int64"),
    ("block_table", lambda a: a["block_table"][:1], ValueError, r"block_table.shape = \(1, 2\)"),
    ("block_table", lambda a: np.array([[0, 0], [1, 7]], np.int32), ValueError, r"block_table\[1, 1\] = 7"),
    ("block_table", lambda a: np.array([[-1, 0], [1, 2]], np.int32), ValueError, r"block_table\[0, 0\] = -1"),
    ("cache_seqlens", lambda a: np.array([10, 200], np.int32), ValueError, r"cache_seqlens\[1\] = 200"),
    ("cache_seqlens", lambda a: np.array([-1, 10], np.int32), ValueError, r"cache_seqlens\[0\] = -1"),
    ("cache_seqlens", lambda a: np.array([1, 10], np.int32), ValueError, r"cache_seqlens\[0\] = 1 is shorter"),
    ("cache_seqlens", lambda a: np.array([10], np.int32), ValueError, r"cache_seqlens.shape = \(1,\)"),
    ("head_dim_v", lambda a: 128, ValueError, "head_dim_v = 128"),
]


@pytest.mark.parametrize("arg,mutate,exc,msg", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_input_raises_naming_argument_and_value(arg, mutate, exc, msg):
    a = good()
    a[arg] = mutate(a)
    with pytest.raises(exc, match=msg):
        mla.flash_mla_with_kvcache(a["q"], a["k_cache"], a["block_table"], a["cache_seqlens"], a["head_dim_v"],
                                   None, causal=True)


def test_other_bad_arguments():
    a = good()
    call = lambda **kw: mla.flash_mla_with_kvcache(a["q"], a["k_cache"], a["block_table"], a["cache_seqlens"],  # noqa
                                                   512, kw.pop("sched", None), **kw)
    with pytest.raises(ValueError, match="softmax_scale = nan"):
        call(softmax_scale=float("nan"))
    with pytest.raises(ValueError, match="threads = -1"):
        call(threads=-1)
    with pytest.raises(TypeError, match="tile_scheduler_metadata is a dict"):
        call(sched={})
    with pytest.raises(ValueError, match="is_fp8_kvcache"):
        call(is_fp8_kvcache=True)
    with pytest.raises(ValueError, match=r"q_lens\[0\] = 5"):
        call(q_lens=np.array([5, 1], np.int32))
    with pytest.raises(ValueError, match="num_heads_q = 5"):
        mla.get_mla_metadata(a["cache_seqlens"], 8, 1, 5)


# ---- GIL, NaN, the CLI --------------------------------------------------------------------------

def test_gil_is_released_during_a_long_decode():
    rng, seed = rng_for("gil")
    s_k = 16384
    cache = mla.LatentCache(num_blocks=s_k // 64, block_size=64, dtype="bf16")
    s = cache.add_sequence()
    cache.append(s, rng.standard_normal((s_k, D)).astype(np.float32))
    q = rng.standard_normal((1, 4, 128, D)).astype(BF16)
    bt, sl = cache.block_table([s]), cache.seq_lens([s])
    count, during, done = [0], [], threading.Event()

    def decode():
        before = count[0]
        t0 = time.perf_counter()
        # Repeated to last 0.2 s whatever the kernel's speed (the AMX kernels take ~20 ms a call).
        while time.perf_counter() - t0 < 0.2:
            mla.flash_mla_with_kvcache(q, cache, bt, sl, 512, None, causal=True, threads=1)
        during.extend([count[0] - before, time.perf_counter() - t0])
        done.set()

    t0, probe = time.perf_counter(), threading.Event()
    while time.perf_counter() - t0 < 0.05:  # the loop's own rate, alone
        count[0] += 1
        probe.is_set()
    rate = count[0] / (time.perf_counter() - t0)
    t = threading.Thread(target=decode)
    t.start()
    while not done.is_set():
        count[0] += 1  # pure Python: advances during the call only if the call released the GIL
    t.join()
    steps, elapsed = during
    assert elapsed > 0.1, f"decode took {elapsed:.3f} s: too short to show anything"
    # Holding the GIL, the call would leave the loop at most one switch interval (5 ms, in its
    # Python part); released, the loop runs all along. A tenth of its rate allows a loaded machine.
    assert steps > 0.1 * rate * elapsed, \
        f"{steps} loop steps ran during a {elapsed:.3f} s decode; alone the loop does {rate:.3g} a second"


def test_nan_in_a_used_token_makes_that_sequence_nan_only():
    rng, seed = rng_for("nan")
    case = make_case(rng, seed, b=2, s_q=1, mean_sk=100, h_q=8, h_kv=1, varlen=False, dtype=BF16, causal=False)
    case.k_cache[case.block_table[0, 0], 5, 0, 7] = np.nan
    out, lse = run(case)
    assert np.isnan(np.asarray(out[0], np.float32)).all() and np.isnan(lse[0]).all()
    assert np.isfinite(np.asarray(out[1], np.float32)).all() and np.isfinite(lse[1]).all()


def cli_path():
    p = Path(os.environ.get("MLA_CLI", ROOT / "build" / "mla"))
    assert p.is_file(), f"the mla program is not at {p}: build it (bash scripts/build.sh) or set MLA_CLI"
    return p


@pytest.mark.parametrize("kv", ["bf16", "fp16"])
def test_bit_identical_to_the_cli(tmp_path, kv):
    rng, seed = rng_for(f"cli{kv}")
    dt = BF16 if kv == "bf16" else np.float16
    case = make_case(rng, seed, b=3, s_q=2, mean_sk=150, h_q=16, h_kv=1, varlen=True, dtype=dt, causal=True,
                     zero_len=(1,))
    q32 = case.q.astype(np.float32)
    kv32 = np.nan_to_num(case.k_cache.astype(np.float32)[:, :, 0], nan=0.0)
    bt = np.where(case.block_table == SENTINEL, -1, case.block_table).astype(np.int32)
    inp, outd = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    for name, arr in [("q", q32), ("kv", kv32), ("block_table", bt), ("seq_lens", case.cache_seqlens)]:
        np.save(inp / f"{name}.npy", arr)
    scale = np.float32(D ** -0.5)
    r = subprocess.run([str(cli_path()), "decode", "--in", str(inp), "--out", str(outd), "--kv-dtype", kv,
                        "--q-dtype", "fp32", "--scale", repr(float(scale)), "--causal", "--threads", "2"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out, lse = mla.flash_mla_with_kvcache(q32, case.k_cache, case.block_table, case.cache_seqlens, 512, None,
                                          softmax_scale=float(scale), causal=True, threads=2)
    o_cli = np.load(outd / "o.npy")
    lse_cli = np.load(outd / "lse.npy").transpose(0, 2, 1)
    lse_cli = np.where(lse_cli == -np.inf, np.inf, lse_cli)
    assert np.array_equal(out.view(np.uint32), o_cli.view(np.uint32)), f"o differs from the CLI's (seed {seed})"
    assert np.array_equal(lse.view(np.uint32), lse_cli.view(np.uint32)), f"lse differs from the CLI's (seed {seed})"


# ---- copies of k_cache, measured ---------------------------------------------------------------

COPY_PROBE = r"""
import re, sys, numpy as np, ml_dtypes, mla
kind = sys.argv[1]
blocks = 1600                                   # 1600 x 64 tokens x 576 x 2 B = 118 MB
# Peak resident memory of this process image (VmHWM; getrusage's maxrss survives exec, so it
# would carry the parent's peak).
rss = lambda: int(re.search(r"VmHWM:\s+(\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
q = np.ones((1, 1, 1, 576), ml_dtypes.bfloat16)
bt = np.arange(blocks, dtype=np.int32)[None]
sl = np.array([blocks * 64], np.int32)
if kind == "array":
    k = np.full((blocks, 64, 1, 576), 0.5, ml_dtypes.bfloat16)
    nbytes = k.nbytes
else:
    k = mla.LatentCache(blocks, 64, "bf16")
    s = k.add_sequence()
    for _ in range(16):
        k.append(s, np.full((blocks * 4, 576), 0.5, np.float32))
    nbytes = blocks * 64 * 576 * 2
small = np.ones((1, 64, 1, 576), ml_dtypes.bfloat16)  # warm-up on another, small k_cache
mla.flash_mla_with_kvcache(q, small, bt[:, :1] * 0, np.array([64], np.int32), 512, None)
before = rss()
mla.flash_mla_with_kvcache(q, k, bt, sl, 512, None, threads=1)
print((rss() - before) / nbytes)
"""


def copied_fraction(kind):
    r = subprocess.run([sys.executable, "-c", COPY_PROBE, kind], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return float(r.stdout.strip())


def test_latent_cache_is_read_in_place():
    frac = copied_fraction("cache")
    assert frac < 0.1, f"the process grew by {frac:.2f} x the cache's size during one decode"


def test_array_k_cache_is_not_copied():
    frac = copied_fraction("array")
    assert frac < 0.1, f"the process grew by {frac:.2f} x k_cache's size during one decode"


def fp8_layouts(data):
    """FlashMLA's fp8 cache bytes [nb, bs, 656] in the layouts a caller may hand over: contiguous,
    [nb, bs, 1, 656], float8_e4m3fn, blocks padded, tokens padded (read in place by strides)."""
    nb_, bs, t = data.shape
    yield "contiguous", data
    yield "4d", data[:, :, None, :]
    yield "float8_e4m3fn", data.view(ml_dtypes.float8_e4m3fn)
    blocks = np.full((nb_, bs * t + 96), 0xFF, np.uint8)  # padding of NaN codes, never read
    view = blocks[:, :bs * t].reshape(nb_, bs, t)
    view[...] = data
    assert not view.flags.c_contiguous and np.shares_memory(view, blocks)
    yield "padded blocks", view
    toks = np.full((nb_, bs, t + 16), 0xFF, np.uint8)
    toks[:, :, :t] = data
    yield "padded tokens", toks[:, :, :t]


def test_fp8_array_k_cache():
    rng, seed = rng_for("fp8array")
    cache = mla.LatentCache(num_blocks=20, block_size=16, dtype="fp8", shuffle_seed=seed + 1)
    seqs = fill_latent_cache(rng, cache, [150, 0, 33])
    bt, sl = cache.block_table(seqs), cache.seq_lens(seqs)
    q = rng.standard_normal((3, 2, 16, D)).astype(BF16)
    want_o, want_l = mla.flash_mla_with_kvcache(q, cache, bt, sl, 512, None, causal=True, is_fp8_kvcache=True)
    # float64 reference on the de-quantized cache and the query the kernel used (DESIGN §6: 5e-3)
    ro, rl = reference(cache.query_values(q), cache.export_array()[:, :, None, :], bt, sl, True)
    check_design(want_o, want_l, ro, rl, seed)
    data = cache.export_fp8()
    assert data.dtype == np.uint8 and data.shape == (20, 16, 656)
    for name, k in fp8_layouts(data):
        o, l = mla.flash_mla_with_kvcache(q, k, bt, sl, 512, None, causal=True, is_fp8_kvcache=True)
        assert np.array_equal(o.view(np.uint16), want_o.view(np.uint16)), f"{name} (seed {seed})"
        assert np.array_equal(l, want_l), f"{name} (seed {seed})"
    other = mla.LatentCache(num_blocks=20, block_size=16, dtype="fp8")
    other.import_fp8(data)
    assert np.array_equal(other.export_fp8(), data)
    with pytest.raises(ValueError, match="is_fp8_kvcache = False"):
        mla.flash_mla_with_kvcache(q, data, bt, sl, 512, None)
    with pytest.raises(ValueError, match="is_fp8_kvcache = False"):
        mla.flash_mla_with_kvcache(q, cache, bt, sl, 512, None)
    sched, _ = mla.get_mla_metadata()
    mla.flash_mla_with_kvcache(q, cache, bt, sl, 512, sched, causal=True, is_fp8_kvcache=True)
    with pytest.raises(ValueError, match="is_fp8_kvcache = False"):  # also where a schedule is set up
        mla.flash_mla_with_kvcache(q, cache, bt, sl, 512, sched, causal=True)
    with pytest.raises(ValueError, match="656"):
        mla.flash_mla_with_kvcache(q, data[:, :, :600], bt, sl, 512, None, is_fp8_kvcache=True)
    with pytest.raises(ValueError, match="shape"):
        other.import_fp8(data[:10])
    bad = data.copy()
    bad[0, 3, 512:516] = np.frombuffer(np.float32(-1).tobytes(), np.uint8)  # tile scale -1
    with pytest.raises(ValueError, match="scale"):
        other.import_fp8(bad)


@pytest.mark.parametrize("scale,groups", [("group32", 16), ("group64", 8), ("group128", 4)])
def test_int8_group_export(scale, groups):
    rng, seed = rng_for(f"grp{scale}")
    cache = mla.LatentCache(num_blocks=3, block_size=8, dtype="int8", scale=scale)
    s = cache.add_sequence()
    toks = rng.standard_normal((20, D)).astype(np.float32)
    toks[:, 7] *= 30  # an outlier channel: only its group's scale grows
    cache.append(s, toks)
    content = cache.export_int8()
    ts = content["token_scale"]
    assert ts.shape == (3, 8, groups), f"seed {seed}"
    slots = cache.slot_mapping(s, range(20))
    flat = ts.reshape(-1, groups)[slots]
    g = 512 // groups
    want = np.abs(toks[:, :512]).reshape(20, groups, g).max(axis=2) / 127
    assert np.allclose(flat, want, rtol=1e-6), f"seed {seed}"
    got = cache.export_array().reshape(-1, D)[slots]
    deq = content["latent"].reshape(-1, 512)[slots].astype(np.float64) * np.repeat(flat, g, axis=1)
    assert np.array_equal(got[:, :512], deq.astype(np.float32)), f"seed {seed}"
    other = mla.LatentCache(num_blocks=3, block_size=8, dtype="int8", scale=scale)
    other.import_int8(**content)
    assert np.array_equal(other.export_array(), cache.export_array())
    with pytest.raises(ValueError):
        other.import_int8(**{**content, "token_scale": ts[:, :, :1]})
