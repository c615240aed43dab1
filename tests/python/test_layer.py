# mla.Layer two ways, on tiny checkpoints written here in the safetensors format (8-byte header
# length, JSON header, raw data) with seeded random bf16 weights, the tensor names and shapes of
# DeepSeek-V3's self_attn:
#   - against the C++ `mla layer` command (a binding test: bit-identical, the same library code,
#     prefill per sequence and one decode step), and its refusals;
#   - against a float64 NumPy layer written from Hugging Face's DeepSeek code (layer_ref.py, no
#     code shared with the library): interleaved and rotate-half RoPE, YaRN with mscale equal to
#     and different from mscale_all_dim, a short original context where YaRN's ramp is mid-range.
# The CLI: $MLA_CLI, else build/mla in the repository (cmake --build build --target mla_cli).
from __future__ import annotations

import json
import os
import struct
import subprocess
import threading
import zlib
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import layer_ref
import mla
from mla_ref import seed_rng

ROOT = Path(__file__).resolve().parents[2]
HIDDEN, HEADS, Q_LORA, NOPE, V_HEAD = 128, 4, 96, 32, 48


def write_tiny_model(d: Path, seed: int, layers: int = 2, rope: dict | None = None, **cfg_extra) -> Path:
    """rope: keys replacing rope_scaling's; cfg_extra: config.json keys added (rope_interleave)."""
    rng = np.random.default_rng(seed)
    cfg = {
        "model_type": "deepseek_v3", "hidden_size": HIDDEN, "num_attention_heads": HEADS,
        "num_hidden_layers": layers, "q_lora_rank": Q_LORA, "kv_lora_rank": 512,
        "qk_nope_head_dim": NOPE, "qk_rope_head_dim": 64, "v_head_dim": V_HEAD,
        "rms_norm_eps": 1e-6, "rope_theta": 10000, "max_position_embeddings": 163840,
        "attention_bias": False,
        "rope_scaling": {"type": "yarn", "factor": 40, "beta_fast": 32, "beta_slow": 1, "mscale": 0.707,
                         "mscale_all_dim": 0.707, "original_max_position_embeddings": 4096},
    }
    cfg["rope_scaling"].update(rope or {})
    cfg.update(cfg_extra)
    qk = NOPE + 64
    tensors = {}

    def mat(rows, cols, gain=1.0):
        return rng.standard_normal((rows, cols)) * gain / np.sqrt(cols)

    for l in range(layers):
        p = f"model.layers.{l}.self_attn."
        tensors[p + "q_a_proj.weight"] = mat(Q_LORA, HIDDEN)
        tensors[p + "q_a_layernorm.weight"] = 1 + 0.2 * rng.standard_normal(Q_LORA)
        tensors[p + "q_b_proj.weight"] = mat(HEADS * qk, Q_LORA)
        tensors[p + "kv_a_proj_with_mqa.weight"] = mat(576, HIDDEN)
        tensors[p + "kv_a_layernorm.weight"] = 1 + 0.2 * rng.standard_normal(512)
        # Gain 3 spreads the attention scores so the softmax is not flat.
        tensors[p + "kv_b_proj.weight"] = mat(HEADS * (NOPE + V_HEAD), 512, 3.0)
        tensors[p + "o_proj.weight"] = mat(HIDDEN, HEADS * V_HEAD)
    header, blobs, off = {}, [], 0
    for name, v in tensors.items():
        b = np.ascontiguousarray(v.astype(ml_dtypes.bfloat16)).tobytes()
        header[name] = {"dtype": "BF16", "shape": list(v.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(cfg))
    with open(d / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
    return d


def cli() -> str:
    exe = os.environ.get("MLA_CLI") or str(ROOT / "build" / "mla")
    if not os.access(exe, os.X_OK):
        pytest.fail(f"the mla CLI is not at {exe}: build it (cmake --build build --target mla_cli) or set MLA_CLI")
    return exe


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=20261201)


@pytest.mark.parametrize("kv_dtype", ["bf16", "fp16", "int8", "fp8"])
@pytest.mark.parametrize("q_len", [1, 2])
@pytest.mark.parametrize("kv_rotate", ["none", "hadamard"])
def test_layer_matches_cli(model, tmp_path, kv_dtype, q_len, kv_rotate):
    seed = 7 + q_len
    rng = np.random.default_rng(seed)
    B, T, block_size, layer, threads = 3, 70, 16, 1, 2
    lens = np.array([T, 37, q_len + 5], np.int32)
    hidden = rng.standard_normal((B, T, HIDDEN)).astype(np.float32)
    np.save(tmp_path / "hidden.npy", hidden)
    np.save(tmp_path / "lens.npy", lens)
    subprocess.run([cli(), "layer", "--model", str(model), "--layer", str(layer), "--hidden",
                    str(tmp_path / "hidden.npy"), "--lens", str(tmp_path / "lens.npy"), "--q-len", str(q_len),
                    "--kv-dtype", kv_dtype, "--block-size", str(block_size), "--threads", str(threads),
                    "--kv-rotate", kv_rotate, "--out", str(tmp_path / "out")], check=True, capture_output=True)
    want = np.load(tmp_path / "out" / "o.npy")

    lay = mla.Layer.from_pretrained(model, layer=layer, kv_dtype=kv_dtype, block_size=block_size,
                                    threads=threads, num_blocks=32, kv_rotate=kv_rotate)
    assert (lay.hidden_size, lay.num_heads, lay.kv_dtype) == (HIDDEN, HEADS, kv_dtype)
    seqs = [lay.add_sequence() for _ in range(B)]
    step = np.empty((B, q_len, HIDDEN), np.float32)
    for b, s in enumerate(seqs):
        P = int(lens[b]) - q_len
        lay.prefill(s, hidden[b, :P])
        step[b] = hidden[b, P:P + q_len]
    got = lay.decode(seqs, step)
    assert got.shape == (B, q_len, HIDDEN) and got.dtype == np.float32
    assert np.isfinite(got).all(), f"seed {seed}"
    assert np.array_equal(got, want), f"seed {seed}: max |diff| {np.abs(got - want).max()}"
    assert [lay.seq_len(s) for s in seqs] == list(lens)


def test_layer_steps_and_free(model):
    # Two steps of one token equal one prefill + one step; freeing returns the blocks.
    rng = np.random.default_rng(3)
    h = rng.standard_normal((1, 12, HIDDEN)).astype(np.float32)
    a = mla.Layer.from_pretrained(model, layer=0, block_size=4, threads=1, num_blocks=8)
    b = mla.Layer.from_pretrained(model, layer=0, block_size=4, threads=1, num_blocks=8)
    sa, sb = a.add_sequence(), b.add_sequence()
    a.prefill(sa, h[0, :10])
    a.decode([sa], h[:, 10:11])
    oa = a.decode([sa], h[:, 11:12])
    b.prefill(sb, h[0, :11])
    ob = b([sb], h[:, 11:12])
    # Not bit-equal where the CPU has AMX: token 10's cache entry comes from a 1-token product
    # (AVX-512, fp32) in a and from an 11-token one (the tile unit, x as bf16 hi + lo) in b.
    np.testing.assert_allclose(oa, ob, rtol=0, atol=1e-3 * np.abs(ob).max())
    assert a.free_blocks == 8 - 3
    a.free(sa)
    assert a.free_blocks == 8


def test_two_layers_step_in_two_threads(model):
    # Each thread prefills and decodes a Layer of its own (the binding locks per Layer, so both
    # run at once, threads=2 each: one finds the process's worker pool busy and runs alone):
    # every step equals the same steps run on one thread.
    rng = np.random.default_rng(5)
    h = [rng.standard_normal((1, 20, HIDDEN)).astype(np.float32) for _ in range(2)]

    def steps(i, out):
        lay = mla.Layer.from_pretrained(model, layer=i % 2, block_size=4, threads=2, num_blocks=16)
        s = lay.add_sequence()
        lay.prefill(s, h[i][0, :8])
        for t in range(8, 20):
            out.append(lay.decode([s], h[i][:, t:t + 1]))

    want = [[], []]
    for i in range(2):
        steps(i, want[i])
    got, errors = [[], []], []

    def run(i):
        try:
            steps(i, got[i])
        except Exception as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i in range(2):
        assert len(got[i]) == len(want[i])
        for g, w in zip(got[i], want[i]):
            assert np.array_equal(g, w)


def test_layer_refusals(model, tmp_path):
    with pytest.raises(ValueError, match="layer = 2"):
        mla.Layer.from_pretrained(model, layer=2)
    with pytest.raises(ValueError, match="fp32"):
        mla.Layer.from_pretrained(model, kv_dtype="fp32")
    with pytest.raises(ValueError, match="block_size = 0"):
        mla.Layer.from_pretrained(model, block_size=0)
    with pytest.raises(ValueError, match="num_blocks = 0"):
        mla.Layer.from_pretrained(model, num_blocks=0)
    with pytest.raises(ValueError, match="threads = -1"):
        mla.Layer.from_pretrained(model, threads=-1)
    with pytest.raises(ValueError, match="nowhere"):
        mla.Layer.from_pretrained(tmp_path / "nowhere")

    lay = mla.Layer.from_pretrained(model, block_size=4, threads=1, num_blocks=3)
    s = lay.add_sequence()
    h = np.zeros((1, 1, HIDDEN), np.float32)
    with pytest.raises(ValueError, match="float32"):
        lay.prefill(s, np.zeros((2, HIDDEN), np.float64))
    with pytest.raises(ValueError, match="hidden"):
        lay.prefill(s, np.zeros((2, HIDDEN + 1), np.float32))
    with pytest.raises(ValueError, match="hidden"):
        lay.decode([s], np.zeros((2, 1, HIDDEN), np.float32))  # batch 2, one sequence
    with pytest.raises(ValueError, match="99"):
        lay.decode([99], h)
    with pytest.raises(ValueError, match="twice"):
        lay.decode([s, s], np.zeros((2, 1, HIDDEN), np.float32))
    lay.prefill(s, np.ones((10, HIDDEN), np.float32))
    with pytest.raises(ValueError, match="blocks"):
        lay.decode([s], np.zeros((1, 3, HIDDEN), np.float32))  # 13 tokens need 4 blocks of 4
    assert lay.seq_len(s) == 10 and lay.free_blocks == 0  # the refused step changed nothing
    assert lay.decode([s], np.ones((1, 2, HIDDEN), np.float32)).shape == (1, 2, HIDDEN)


# ---- against the float64 NumPy layer (layer_ref.py) ---------------------------------------------

# (name, rope_scaling keys, config keys): the tiny model's YaRN (factor 40 over 4096 positions,
# mscale = mscale_all_dim = 0.707), rotate-half RoPE, mscale != mscale_all_dim (the factor cos and
# sin carry is then not 1), and an original context of 64 positions (factor 8) where the ramp
# between original and interpolated frequencies covers dims 0-9 of 32.
FLOAT64_CASES = [
    ("interleaved", {}, {}),
    ("rotate-half", {}, {"rope_interleave": False}),
    ("mscale-1.0-all-0.5", {"mscale": 1.0, "mscale_all_dim": 0.5}, {}),
    ("rotate-half-mscale", {"mscale": 1.0, "mscale_all_dim": 0.5}, {"rope_interleave": False}),
    ("short-original", {"factor": 8, "original_max_position_embeddings": 64}, {}),
]


@pytest.mark.parametrize("kv_dtype", ["bf16", "int8"])
@pytest.mark.parametrize("name,rope,extra", FLOAT64_CASES, ids=[c[0] for c in FLOAT64_CASES])
def test_layer_against_float64_numpy(tmp_path, name, rope, extra, kv_dtype):
    rng, seed = seed_rng(f"layer64{name}{kv_dtype}", zlib.crc32(f"{name}{kv_dtype}".encode()))
    model = write_tiny_model(tmp_path / "model", seed=seed, rope=rope, **extra)
    cfg = json.loads((model / "config.json").read_text())
    w = layer_ref.load_weights(model, 1)
    q_len, lens = 2, [90, 37, 7]
    lay = mla.Layer.from_pretrained(model, layer=1, kv_dtype=kv_dtype, block_size=16, threads=2, num_blocks=32)
    hidden = [rng.standard_normal((n, HIDDEN)).astype(np.float32) for n in lens]
    seqs = [lay.add_sequence() for _ in lens]
    for s, h in zip(seqs, hidden):
        lay.prefill(s, h[:-q_len])
    got = lay.decode(seqs, np.stack([h[-q_len:] for h in hidden]))
    want = np.stack([layer_ref.layer_forward(cfg, w, h, q_len) for h in hidden])
    rel = np.linalg.norm(got - want) / np.linalg.norm(want)
    cos = (got * want).sum() / (np.linalg.norm(got) * np.linalg.norm(want))
    # About 2x the worst of 40 seeds per case (2026-12-07, MLA_PRINT_ACCURACY=1: bf16 rel 5.6e-3,
    # int8 2.3e-2, cosine >= 0.99973). The layer rounds its activations to bf16 and the cache
    # rounds or quantizes K and V; a RoPE pairing, YaRN frequency or mscale mistake costs more.
    bound = 1.2e-2 if kv_dtype == "bf16" else 5e-2
    if os.environ.get("MLA_PRINT_ACCURACY"):
        print(f"[ ACCURACY ] layer {name} {kv_dtype} rel {rel:.3e} cos {cos:.6f}")
    assert rel < bound, f"{name} {kv_dtype}: relative error {rel:.3g} >= {bound} (seed {seed})"


def test_float64_layer_yarn_by_hand():
    # The NumPy layer's YaRN quantities against values worked out by hand (ln 40 = 3.6888795,
    # sqrt(192) = 13.8564065), so the reference's formulas are pinned too.
    base = dict(qk_nope_head_dim=128, qk_rope_head_dim=64, rope_theta=10000)
    yarn = dict(factor=40, beta_fast=32, beta_slow=1, original_max_position_embeddings=4096)
    # mscale = mscale_all_dim = 0.707: m = 1 + 0.0707 ln 40 = 1.2608038; scale m^2 / sqrt(192).
    f, af, scale = layer_ref.rope_quantities({**base, "rope_scaling": {**yarn, "mscale": 0.707,
                                                                        "mscale_all_dim": 0.707}})
    assert af == 1.0 and abs(scale - 1.2608038 ** 2 / 13.8564065) < 1e-7
    # Correction range over 4096 positions, beta 32 / 1, dim 64: floor(10.2) = 10, ceil(22.4) = 23.
    # Dim 16 is 6/13 of the way: 10000^-0.5 (6/13 / 40 + 7/13) = 0.01 x 286/520 = 0.0055.
    assert abs(f[16] - 0.0055) < 1e-15 and abs(f[10] / 10000 ** (-20 / 64) - 1) < 1e-15
    assert abs(f[23] / (10000 ** (-46 / 64) / 40) - 1) < 1e-15
    # mscale 1.0, mscale_all_dim 0.5: cos and sin carry (1 + 0.1 ln 40) / (1 + 0.05 ln 40)
    # = 1.3688879 / 1.1844440 = 1.1557220; scale 1.1844440^2 / sqrt(192) = 0.1012461.
    _, af, scale = layer_ref.rope_quantities({**base, "rope_scaling": {**yarn, "mscale": 1.0,
                                                                       "mscale_all_dim": 0.5}})
    assert abs(af - 1.1557220) < 1e-6 and abs(scale - 0.1012461) < 1e-6
    # 64 original positions, factor 8: range [0, 9]; dim 3 is 1/3 in: 10^-0.375 (1/24 + 2/3) = 0.2987017.
    f, _, _ = layer_ref.rope_quantities({**base, "rope_scaling": {**yarn, "factor": 8, "mscale": 1, "mscale_all_dim": 1,
                                                                  "original_max_position_embeddings": 64}})
    assert abs(f[3] - 0.2987017) < 1e-6
