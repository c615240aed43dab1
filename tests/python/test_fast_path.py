"""The call an engine makes every step: flash_mla_with_kvcache on a LatentCache with one schedule
(get_mla_metadata) reused across calls, as by every layer of a decode step. The first call sets the
schedule up (the general path); the second takes the short path of python/mla/__init__.py (NumPy
inputs, a LatentCache, a schedule already made for these shapes; fp8 caches go the general way).
The second call is checked against the float64 reference and must be bit-identical to the first,
for every cache dtype, the default and an explicit softmax_scale; the same through DLPack torch
tensors where torch is installed (skipped otherwise). MLA_TEST_SEED repeats a failing case."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

import mla
from mla_ref import BF16, D, check_design, check_design_int8, reference, seed_rng

# bf16 / fp16 / int8 (per-token and per-group scales) / fp8 caches; the query dtype the caller
# hands over (the fast path's two branches: bf16 bits, and fp16 / fp32 passed as they are).
CASES = [("bf16", "token", "bf16"), ("bf16", "token", "fp32"), ("fp16", "token", "fp16"),
         ("int8", "token", "bf16"), ("int8", "group64", "bf16"), ("int8", "channel", "fp32"),
         ("fp8", "token", "bf16")]
Q_DTYPES = {"bf16": BF16, "fp16": np.float16, "fp32": np.float32}
# None: FlashMLA's default, 576 ** -0.5; 0.1352: DeepSeek-V3's (YaRN mscale included).
SCALES = [None, 0.1352]
LENS = [300, 0, 77, 2]  # a padding sequence (lse +inf, out 0) and one with only its query rows
S_Q, H_Q = 2, 16


def make_cache(rng, seed, dtype, scale):
    cache = mla.LatentCache(num_blocks=40, block_size=32, dtype=dtype, scale=scale, shuffle_seed=seed + 1)
    if scale != "token":
        cache.calibrate(3 * rng.standard_normal((256, D)).astype(np.float32))
    seqs = [cache.add_sequence() for _ in LENS]
    for s, n in zip(seqs, LENS):
        for part in np.array_split(np.arange(n), 3):  # appended in pieces, as decode steps do
            if len(part):
                cache.append(s, rng.standard_normal((len(part), D)).astype(np.float32))
    return cache, cache.block_table(seqs), cache.seq_lens(seqs)


def check_against_reference(cache, q, bt, sl, out, lse, scale, seed):
    ref_scale = D ** -0.5 if scale is None else scale  # written out: the default is not taken from mla
    ro, rl = reference(cache.query_values(q), cache.export_array()[:, :, None, :], bt, sl, True, scale=ref_scale)
    if cache.dtype == "int8":
        check_design_int8(out, lse, ro, rl, seed)
    else:  # sequences of 2 and 77 tokens: DESIGN §6 (see mla_ref.make_case on FlashMLA's tolerance)
        check_design(out, lse, ro, rl, seed)


@pytest.mark.parametrize("scale", SCALES, ids=["default-scale", "scale-0.1352"])
@pytest.mark.parametrize("kv,kv_scale,q_dtype", CASES, ids=[f"{a}-{b}-q{c}" for a, b, c in CASES])
def test_reused_schedule_on_latent_cache(kv, kv_scale, q_dtype, scale):
    name = f"fast{kv}{kv_scale}{q_dtype}{scale}"
    rng, seed = seed_rng(name, zlib.crc32(name.encode()))
    cache, bt, sl = make_cache(rng, seed, kv, kv_scale)
    # float32 queries hold bf16 values: the kernels compute with the query rounded to 16 bits
    q = rng.standard_normal((len(LENS), S_Q, H_Q, D)).astype(BF16 if q_dtype == "fp32" else Q_DTYPES[q_dtype])
    q = q.astype(Q_DTYPES[q_dtype])
    sched, _ = mla.get_mla_metadata()
    kw = dict(causal=True, is_fp8_kvcache=kv == "fp8")
    if scale is not None:
        kw["softmax_scale"] = scale
    o1, l1 = mla.flash_mla_with_kvcache(q, cache, bt, sl, 512, sched, **kw)
    assert sched.have_initialized, f"seed {seed}"
    o2, l2 = mla.flash_mla_with_kvcache(q, cache, bt, sl, 512, sched, **kw)
    assert o2.dtype == q.dtype and l2.dtype == np.float32 and l2.shape == (len(LENS), H_Q, S_Q)
    check_against_reference(cache, q, bt, sl, o2, l2, scale, seed)
    assert np.array_equal(o1.view(np.uint8), o2.view(np.uint8)), f"out of the two calls differ (seed {seed})"
    assert np.array_equal(l1.view(np.uint32), l2.view(np.uint32)), f"lse of the two calls differ (seed {seed})"
    assert (l2[1] == np.inf).all() and not np.asarray(o2[1], np.float32).any(), f"padding row (seed {seed})"


@pytest.mark.parametrize("scale", SCALES, ids=["default-scale", "scale-0.1352"])
@pytest.mark.parametrize("kv", ["bf16", "fp16", "int8", "fp8"])
def test_reused_schedule_with_torch_tensors(kv, scale):
    torch = pytest.importorskip("torch")
    name = f"fasttorch{kv}{scale}"
    rng, seed = seed_rng(name, zlib.crc32(name.encode()))
    cache, bt, sl = make_cache(rng, seed, kv, "token")
    q_np = rng.standard_normal((len(LENS), S_Q, H_Q, D)).astype(np.float16 if kv == "fp16" else BF16)
    if q_np.dtype == BF16:
        q = torch.from_numpy(q_np.view(np.uint16).astype(np.int16)).view(torch.bfloat16)
    else:
        q = torch.from_numpy(q_np)
    bt_t, sl_t = torch.from_numpy(bt), torch.from_numpy(sl)
    sched, _ = mla.get_mla_metadata()
    kw = dict(causal=True, is_fp8_kvcache=kv == "fp8")
    if scale is not None:
        kw["softmax_scale"] = scale
    o1, l1 = mla.flash_mla_with_kvcache(q, cache, bt_t, sl_t, 512, sched, **kw)
    o2, l2 = mla.flash_mla_with_kvcache(q, cache, bt_t, sl_t, 512, sched, **kw)
    assert isinstance(o2, torch.Tensor) and o2.dtype == q.dtype and l2.dtype == torch.float32
    bits = lambda o, l: (o.view(torch.int16), l.view(torch.int32))  # noqa: E731
    assert all(torch.equal(a, b) for a, b in zip(bits(o1, l1), bits(o2, l2))), f"the two calls differ (seed {seed})"
    check_against_reference(cache, q_np, bt, sl, o2.float().numpy(), l2.numpy(), scale, seed)


def test_check_design_tells_infinities_apart_by_sign():
    # The comparator the tests above rely on: lse -inf where the reference says +inf (an empty
    # row in the kernels' convention instead of FlashMLA's) must fail, as must a finite value.
    rng, seed = seed_rng("checkinf")
    ro = rng.standard_normal((2, 1, 4, 512))
    rl = np.array([[[1.5], [np.inf], [2.0], [np.inf]], [[0.5], [0.25], [np.inf], [3.0]]])
    check_design(ro, rl.copy(), ro, rl, seed)
    for bad in (-np.inf, 7.0):
        got = rl.copy()
        got[0, 1, 0] = bad
        with pytest.raises(AssertionError, match="infinities"):
            check_design(ro, got, ro, rl, seed)
