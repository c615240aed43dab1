# mla.Layer against the C++ `mla layer` command on the same tiny checkpoint (bit-identical: the
# same library code, prefill per sequence and one decode step), and its refusals. The checkpoint
# is written here in the safetensors format (8-byte header length, JSON header, raw data) with
# seeded random bf16 weights, the tensor names and shapes of DeepSeek-V3's self_attn.
# The CLI: $MLA_CLI, else build/mla in the repository (cmake --build build --target mla_cli).
import json
import os
import struct
import subprocess
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import mla

ROOT = Path(__file__).resolve().parents[2]
HIDDEN, HEADS, Q_LORA, NOPE, V_HEAD = 128, 4, 96, 32, 48


def write_tiny_model(d: Path, seed: int, layers: int = 2) -> Path:
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
    assert np.array_equal(oa, ob)
    assert a.free_blocks == 8 - 3
    a.free(sa)
    assert a.free_blocks == 8


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
