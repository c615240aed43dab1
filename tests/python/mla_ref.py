"""Inputs built the way FlashMLA's dense-decoding test builds them, a float64 NumPy reference, and
FlashMLA's accuracy checks. Shared by the pytest suite and the torch script."""

from __future__ import annotations

import dataclasses
import os

import ml_dtypes
import numpy as np

BF16 = np.dtype(ml_dtypes.bfloat16)
SENTINEL = 2147480000  # FlashMLA's tests put this in block-table entries that must not be read
D, DV = 576, 512


def seed_rng(request_or_name: str, extra: int = 0) -> tuple[np.random.Generator, int]:
    """A generator seeded from MLA_TEST_SEED (or a fresh seed); the seed goes into failure messages."""
    base = os.environ.get("MLA_TEST_SEED")
    seed = int(base) if base else int(np.random.SeedSequence().entropy % (2**31))
    seed = (seed + extra) % (2**31)
    return np.random.default_rng(seed), seed


@dataclasses.dataclass
class Case:
    q: np.ndarray              # [b, s_q, h_q, 576] in `dtype`
    k_cache: np.ndarray        # [num_blocks, block_size, h_kv, 576] in `dtype`
    block_table: np.ndarray    # [b, max_blocks] int32, SENTINEL past each sequence's blocks
    cache_seqlens: np.ndarray  # [b] int32
    causal: bool
    seed: int


def make_case(rng, seed, b, s_q, mean_sk, h_q, h_kv, varlen, dtype, causal, block_size=64,
              zero_len=(), extra_blocks=3, min_len=512) -> Case:
    """FlashMLA's construction: lengths ~ N(mean, mean/2) clipped to >= s_q when varlen, a random
    permutation of the pool's blocks as block tables, NaN in every unused block and past each
    sequence's end, the sentinel in unused table entries; sequences in `zero_len` have length 0.
    Non-empty lengths are at least min_len: FlashMLA's absolute tolerance (8e-4) presumes its
    long contexts (thousands of tokens), where outputs are ~1/sqrt(L); with a handful of keys the
    bf16 rounding of P alone (2^-9 relative, in FlashMLA's GPU kernel too) exceeds it on elements
    near zero. Short sequences are checked against DESIGN §6 (check_design) instead."""
    seqlens = np.full(b, mean_sk, dtype=np.int32)
    if varlen:
        for i in range(b):
            seqlens[i] = max(int(rng.normal(mean_sk, mean_sk / 2)), s_q, min_len)
    for i in zero_len:
        seqlens[i] = 0
    max_blocks = max(1, int(-(-int(seqlens.max()) // block_size)))
    num_blocks = b * max_blocks + extra_blocks
    perm = rng.permutation(num_blocks).astype(np.int32)
    block_table = perm[: b * max_blocks].reshape(b, max_blocks).copy()
    k = rng.standard_normal((num_blocks, block_size, h_kv, D)).astype(np.float32)
    used = np.zeros((num_blocks, block_size), dtype=bool)
    for i in range(b):
        nb = -(-int(seqlens[i]) // block_size)
        block_table[i, nb:] = SENTINEL
        for t in range(int(seqlens[i])):
            used[block_table[i, t // block_size], t % block_size] = True
    k[~used] = np.nan
    q = rng.standard_normal((b, s_q, h_q, D)).astype(np.float32)
    return Case(q.astype(dtype), k.astype(dtype), block_table, seqlens, causal, seed)


def reference(q, k_cache, block_table, cache_seqlens, causal, scale=None, q_lens=None):
    """FlashMLA's semantics in float64: out [b, s_q, h_q, 512], lse [b, h_q, s_q]; rows with
    nothing to attend give out 0 and lse +inf. q and k_cache as float arrays (already rounded)."""
    q = np.asarray(q, dtype=np.float64)
    k_cache = np.asarray(k_cache, dtype=np.float64)
    b, s_q, h_q, d = q.shape
    _, bs, h_kv, _ = k_cache.shape
    hg = h_q // h_kv
    scale = d ** -0.5 if scale is None else scale
    out = np.zeros((b, s_q, h_q, DV))
    lse = np.full((b, h_q, s_q), np.inf)
    for i in range(b):
        L = int(cache_seqlens[i])
        if L == 0:
            continue
        ql = s_q if q_lens is None else int(q_lens[i])
        pos = np.arange(L)
        slots = block_table[i, pos // bs].astype(np.int64) * bs + pos % bs
        for g in range(h_kv):
            K = k_cache.reshape(-1, h_kv, d)[slots, g]  # [L, 576]
            Q = q[i, :ql, g * hg:(g + 1) * hg]          # [ql, hg, 576]
            S = (Q.reshape(-1, d) @ K.T).reshape(ql, hg, L) * scale
            if causal and s_q > 1:
                last = L - ql + np.arange(ql)  # row r sees 0 .. L - ql + r
                S = np.where(pos[None, None, :] <= last[:, None, None], S, -np.inf)
            m = S.max(axis=-1, keepdims=True)
            P = np.exp(S - m)
            l = P.sum(axis=-1, keepdims=True)
            out[i, :ql, g * hg:(g + 1) * hg] = ((P / l).reshape(-1, L) @ K[:, :DV]).reshape(ql, hg, DV)
            lse[i, g * hg:(g + 1) * hg, :ql] = (np.log(l) + m)[..., 0].T
    return out, lse


def check_flashmla(got, ref, name, seed, abs_tol=8e-4, rel_tol=2.01 / 128, cos_tol=5e-6):
    """FlashMLA's check: every element within abs_tol or rel_tol (inf where the reference is inf,
    never NaN), and the cosine difference of the whole tensor below cos_tol."""
    got = np.asarray(got, dtype=np.float64)
    assert got.shape == ref.shape, f"{name}: shape {got.shape} != {ref.shape} (seed {seed})"
    inf = np.isinf(ref)
    assert np.array_equal(np.isinf(got), inf) and np.array_equal(got[inf], ref[inf]), \
        f"{name}: infinities differ from the reference (seed {seed})"
    assert not np.isnan(got).any(), f"{name}: NaN in the output (seed {seed})"
    g, r = got[~inf], ref[~inf]
    diff = np.abs(g - r)
    bad = (diff > abs_tol) & (diff > rel_tol * np.abs(r))
    assert not bad.any(), (f"{name}: {bad.sum()} elements outside abs {abs_tol} / rel {rel_tol}, "
                           f"worst diff {diff.max():.3g} (seed {seed})")
    denom = max((g * g + r * r).sum(), 1e-12)
    cos_diff = 1 - 2 * (g * r).sum() / denom
    assert cos_diff < cos_tol, f"{name}: cosine difference {cos_diff:.3g} >= {cos_tol} (seed {seed})"


def check_design(got_o, got_lse, ref_o, ref_lse, seed, rel=5e-3, lse_tol=1e-3, cos=None):
    """DESIGN §6: relative Frobenius error of o below rel (bf16/fp16 5e-3, int8 2e-2), lse within
    lse_tol absolute, the same infinities (sign included), no NaN; int8 also cosine similarity above
    `cos`."""
    o = np.asarray(got_o, dtype=np.float64)
    assert not np.isnan(o).any() and not np.isnan(got_lse).any(), f"NaN in the output (seed {seed})"
    err = np.linalg.norm(o - ref_o) / np.linalg.norm(ref_o)
    assert err < rel, f"o: relative error {err:.3g} >= {rel} (seed {seed})"
    if cos is not None:
        c = (o * ref_o).sum() / (np.linalg.norm(o) * np.linalg.norm(ref_o))
        assert c > cos, f"o: cosine similarity {c:.6f} <= {cos} (seed {seed})"
    got_lse = np.asarray(got_lse, dtype=np.float64)
    # Infinities exactly, sign included: FlashMLA gives +inf for rows with nothing to attend, and a
    # -inf there (the kernels' own convention leaking out) is a bug, not a match.
    fin = np.isfinite(ref_lse)
    assert np.array_equal(np.isinf(got_lse), ~fin) and np.array_equal(got_lse[~fin], ref_lse[~fin]), \
        f"lse infinities differ from the reference, sign included (seed {seed})"
    d = np.abs(got_lse[fin] - ref_lse[fin]).max() if fin.any() else 0.0
    assert d < lse_tol, f"lse off by {d:.3g} >= {lse_tol} (seed {seed})"


def check_design_int8(got_o, got_lse, ref_o, ref_lse, seed):
    """DESIGN §6 for the int8 path (reference on the de-quantized cache and query)."""
    check_design(got_o, got_lse, ref_o, ref_lse, seed, rel=2e-2, lse_tol=1e-2, cos=0.999)
