"""A float64 NumPy DeepSeek-V2/V3 attention layer, written from Hugging Face's modeling_deepseek.py
(DeepseekV3Attention.forward, DeepseekV3YarnRotaryEmbedding, yarn_get_mscale,
yarn_find_correction_range, yarn_linear_ramp_mask, apply_rotary_pos_emb) and transformers'
DeepseekV3 (rope_interleave: false takes rotate_half without the de-interleave), un-absorbed:
K and V decompressed per head, as the checkpoint's equations read. It shares no code with the mla
library (not its config parser, not its YaRN quantities), so tests/python/test_layer.py can hold
mla.Layer to it. Weights are read back from the safetensors file the test wrote."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

NORM_EPS = 1e-6  # DeepseekV3RMSNorm's default: q_a_layernorm and kv_a_layernorm get no eps


def load_weights(model_dir: Path, layer: int) -> dict[str, np.ndarray]:
    """self_attn.<name> -> float64 matrix, from a single-file bf16 safetensors checkpoint."""
    raw = (Path(model_dir) / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    prefix = f"model.layers.{layer}.self_attn."
    out = {}
    for name, t in header.items():
        if not name.startswith(prefix):
            continue
        assert t["dtype"] == "BF16", t["dtype"]
        a, b = t["data_offsets"]
        v = np.frombuffer(raw[8 + n + a:8 + n + b], dtype=ml_dtypes.bfloat16).astype(np.float64)
        out[name[len(prefix):].removesuffix(".weight")] = v.reshape(t["shape"])
    return out


def yarn_get_mscale(scale: float, mscale: float) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def yarn_correction_dim(rotations, dim, base, max_pos):
    return dim * math.log(max_pos / (rotations * 2 * math.pi)) / (2 * math.log(base))


def rope_quantities(cfg: dict) -> tuple[np.ndarray, float, float]:
    """(inv_freq [rope_dim / 2], the factor cos and sin carry, softmax_scale)."""
    dim, base = cfg["qk_rope_head_dim"], float(cfg.get("rope_theta", 10000))
    exponents = np.arange(0, dim, 2, dtype=np.float64) / dim
    freq_extra = 1.0 / base ** exponents
    scale = (cfg["qk_nope_head_dim"] + dim) ** -0.5
    rs = cfg.get("rope_scaling")
    if not rs:
        return freq_extra, 1.0, scale
    factor = rs["factor"]
    freq_inter = 1.0 / (factor * base ** exponents)
    orig = rs["original_max_position_embeddings"]
    low = max(math.floor(yarn_correction_dim(rs.get("beta_fast", 32), dim, base, orig)), 0)
    high = min(math.ceil(yarn_correction_dim(rs.get("beta_slow", 1), dim, base, orig)), dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0, 1)
    extra_mask = 1.0 - ramp
    inv_freq = freq_inter * (1 - extra_mask) + freq_extra * extra_mask
    mscale, mscale_all = rs.get("mscale", 1), rs.get("mscale_all_dim", 0)
    attention_factor = yarn_get_mscale(factor, mscale) / yarn_get_mscale(factor, mscale_all)
    if mscale_all:
        m = yarn_get_mscale(factor, mscale_all)
        scale *= m * m
    return inv_freq, attention_factor, scale


def rotate_half(x):
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def apply_rope(x, cos, sin, interleave):
    """x [..., T, dim] at positions whose cos / sin [T, dim] are given (HF's emb = cat(freqs, freqs))."""
    if interleave:  # DeepSeek's: pairs (x_2i, x_2i+1) gathered into halves first
        x = np.concatenate([x[..., 0::2], x[..., 1::2]], axis=-1)
    return x * cos + rotate_half(x) * sin


def rms_norm(x, w):
    return w * x / np.sqrt((x * x).mean(-1, keepdims=True) + NORM_EPS)


def layer_forward(cfg: dict, w: dict, hidden: np.ndarray, q_len: int) -> np.ndarray:
    """hidden [T, D] of one sequence (positions 0..T-1); the output [q_len, D] of its last q_len
    tokens, each attending causally to positions 0..its own."""
    T = hidden.shape[0]
    H, nope, rd, vd, L = (cfg["num_attention_heads"], cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"],
                          cfg["v_head_dim"], cfg["kv_lora_rank"])
    x = hidden.astype(np.float64)
    if cfg.get("q_lora_rank"):
        q = rms_norm(x @ w["q_a_proj"].T, w["q_a_layernorm"]) @ w["q_b_proj"].T
    else:
        q = x @ w["q_proj"].T
    q = q.reshape(T, H, nope + rd).transpose(1, 0, 2)  # [H, T, qk]
    ckv = x @ w["kv_a_proj_with_mqa"].T                 # [T, L + rd]
    k_pe = ckv[None, :, L:]                             # [1, T, rd]
    kv = (rms_norm(ckv[:, :L], w["kv_a_layernorm"]) @ w["kv_b_proj"].T).reshape(T, H, nope + vd)
    kv = kv.transpose(1, 0, 2)
    k_nope, v = kv[..., :nope], kv[..., nope:]
    inv_freq, af, scale = rope_quantities(cfg)
    freqs = np.outer(np.arange(T, dtype=np.float64), inv_freq)
    emb = np.concatenate([freqs, freqs], axis=-1)
    cos, sin = np.cos(emb) * af, np.sin(emb) * af
    interleave = cfg.get("rope_interleave", True)
    q_pe = apply_rope(q[..., nope:], cos, sin, interleave)
    k_pe = apply_rope(k_pe, cos, sin, interleave)
    qs = np.concatenate([q[..., :nope], q_pe], axis=-1)
    ks = np.concatenate([k_nope, np.broadcast_to(k_pe, (H, T, rd))], axis=-1)
    s = qs[:, T - q_len:] @ ks.transpose(0, 2, 1) * scale  # [H, q_len, T]
    rows = np.arange(T - q_len, T)
    s = np.where(np.arange(T)[None, None, :] <= rows[None, :, None], s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    attn = (p / p.sum(-1, keepdims=True)) @ v              # [H, q_len, v]
    return attn.transpose(1, 0, 2).reshape(q_len, H * vd) @ w["o_proj"].T
