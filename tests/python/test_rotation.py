"""The rotated latent cache from Python (issue 20): mla.LatentCache(rotation='hadamard') stores
c R (R = D H / sqrt(512), D rebuilt here from the documented seed), reads back the original space,
and decodes against the float64 reference on what the kernels saw; fp8 scale modes; bad values
refused."""

from __future__ import annotations

import numpy as np
import pytest

import mla
from mla_ref import BF16, D, check_design, check_design_int8, reference, seed_rng

SEED = 0x6D6C612D726F7431  # kHadamardSeed, "mla-rot1"
M64 = (1 << 64) - 1


def hadamard_r() -> np.ndarray:
    """R [512, 512] in float64 from the documented construction (splitmix64 signs, Sylvester H)."""
    signs, state = [], SEED
    for _ in range(512):
        state = (state + 0x9E3779B97F4A7C15) & M64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        z ^= z >> 31
        signs.append(-1.0 if z >> 63 else 1.0)
    i = np.arange(512)
    parity = np.vectorize(lambda v: bin(v).count("1") & 1)(i[:, None] & i[None, :])
    h = np.where(parity, -1.0, 1.0) / np.sqrt(512.0)
    return np.array(signs)[:, None] * h


def test_stored_latent_is_rotated_and_reads_back():
    rng, seed = seed_rng("rot-store")
    r = hadamard_r()
    np.testing.assert_allclose(r @ r.T, np.eye(512), atol=1e-12)
    cache = mla.LatentCache(num_blocks=2, block_size=8, dtype="int8", rotation="hadamard")
    assert cache.rotation == "hadamard"
    tok = rng.standard_normal((5, D)).astype(np.float32)
    tok[:, 3] *= 20  # an outlier channel
    s = cache.add_sequence()
    slots = cache.append(s, tok)
    d = cache.export_int8()
    lat = d["latent"].reshape(-1, 512)[slots].astype(np.float64) * d["token_scale"].reshape(-1)[slots, None]
    want = tok[:, :512].astype(np.float64) @ r
    assert np.linalg.norm(lat - want) / np.linalg.norm(want) < 1e-2, seed
    back = cache.export_array().reshape(-1, D)[slots]
    assert np.linalg.norm(back[:, :512] - tok[:, :512]) / np.linalg.norm(tok[:, :512]) < 1e-2, seed
    np.testing.assert_array_equal(back[:, 512:], tok[:, 512:].astype(BF16).astype(np.float32))


@pytest.mark.parametrize("dtype,scale", [("int8", "token"), ("int8", "group64"), ("fp8", "token"),
                                         ("bf16", "token")])
def test_rotated_cache_decodes_like_the_reference(dtype, scale):
    rng, seed = seed_rng(f"rot-{dtype}-{scale}")
    cache = mla.LatentCache(num_blocks=24, block_size=32, dtype=dtype, scale=scale, shuffle_seed=seed + 1,
                            rotation="hadamard")
    lens = [300, 77, 2]
    seqs = [cache.add_sequence() for _ in lens]
    for s, n in zip(seqs, lens):
        cache.append(s, rng.standard_normal((n, D)).astype(np.float32))
    bt, sl = cache.block_table(seqs), cache.seq_lens(seqs)
    q = rng.standard_normal((3, 2, 16, D)).astype(BF16)
    out, lse = mla.flash_mla_with_kvcache(q, cache, bt, sl, 512, None, causal=True,
                                          is_fp8_kvcache=dtype == "fp8")
    kv = cache.export_array()[:, :, None, :]  # the original space: the reference's unrotated problem
    ro, rl = reference(cache.query_values(q), kv, bt, sl, True)
    (check_design_int8 if dtype == "int8" else check_design)(out, lse, ro, rl, seed)


def test_fp8_scale_modes():
    rng, _ = seed_rng("fp8-scale")
    tok = (3 * rng.standard_normal((4, D))).astype(np.float32)
    for mode in ("exact", "pow2"):
        c = mla.LatentCache(num_blocks=1, block_size=4, dtype="fp8", fp8_scale=mode)
        assert c.fp8_scale == mode
        c.append(c.add_sequence(), tok)
        b = c.export_fp8().reshape(4, 656)
        sc = b[:, 512:528].copy().view(np.float32)
        m, _ = np.frexp(sc)
        if mode == "pow2":
            assert np.all(m == 0.5)
        else:  # max|x| / 448 of each 128-channel tile, in float32
            amax = np.abs(tok[:, :512].reshape(4, 4, 128)).max(axis=2)
            np.testing.assert_array_equal(sc, np.maximum(amax / np.float32(448), np.float32(1e-4)))
        d = mla.LatentCache(num_blocks=1, block_size=4, dtype="fp8", fp8_scale=mode)
        d.import_fp8(c.export_fp8())
        np.testing.assert_array_equal(d.export_fp8(), c.export_fp8())


def test_bad_values_are_refused():
    with pytest.raises(ValueError, match="rotation 'walsh'"):
        mla.LatentCache(2, 8, "int8", rotation="walsh")
    with pytest.raises(ValueError, match="fp8 scale 'exactly'"):
        mla.LatentCache(2, 8, "fp8", fp8_scale="exactly")
