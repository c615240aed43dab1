"""MLA decode on CPUs with FlashMLA's Python interface.

Code written for FlashMLA runs by changing one import::

    from mla import get_mla_metadata, flash_mla_with_kvcache

Arrays are NumPy arrays (float32, float16, ``ml_dtypes.bfloat16``), PyTorch CPU tensors (float32,
float16, bfloat16; torch is optional) or any other DLPack producer. Results are of the same kind
as ``q`` (any DLPack producer other than torch gets NumPy arrays). The GIL is released while the
kernels run.

Copies: ``q``, ``block_table`` and ``cache_seqlens`` are read in place when C-contiguous (one
copy otherwise). An array ``k_cache`` is read in place through its strides when its rows of 576
values are contiguous (copied once otherwise). A :class:`LatentCache` is always read in place.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence, Tuple

import ml_dtypes
import numpy as np

from . import _mla

__all__ = [
    "FlashMLASchedMeta",
    "LatentCache",
    "Layer",
    "flash_mla_with_kvcache",
    "get_mla_metadata",
]

_BF16 = np.dtype(ml_dtypes.bfloat16)
_FP8 = np.dtype(ml_dtypes.float8_e4m3fn)
_FP8_TOKEN = 656
_HEAD_DIM = 576
_HEAD_DIM_V = 512


def _is_torch(x: Any) -> bool:
    return type(x).__module__ == "torch" and type(x).__name__ in ("Tensor", "Parameter")


def _as_input(x: Any, name: str) -> Tuple[Any, bool]:
    """x as the module takes it, and whether it is bf16 bits in a uint16 view."""
    if type(x) is np.ndarray:
        if x.dtype == _BF16:
            return x.view(np.uint16), True
        return x, False
    if _is_torch(x):
        if x.device.type != "cpu":
            raise ValueError(f"{name} is on device {x.device}; expected a CPU tensor")
        return x.detach(), False
    if hasattr(x, "__dlpack__") or hasattr(x, "__array_interface__"):
        try:  # zero-copy for DLPack; a NumPy array, so its dtype is known here
            a = np.from_dlpack(x) if hasattr(x, "__dlpack__") else np.asarray(x)
        except (TypeError, BufferError, RuntimeError, ValueError) as e:
            raise TypeError(f"{name}: cannot read this {type(x).__name__} ({e})") from None
        return _as_input(a, name)
    raise TypeError(f"{name} is a {type(x).__name__}; expected a NumPy array, a torch tensor or a DLPack producer")


@dataclasses.dataclass
class FlashMLASchedMeta:
    """The decode schedule of one step, as FlashMLA's ``get_mla_metadata`` returns it.

    The newer no-argument ``get_mla_metadata()`` returns an empty one; the first
    ``flash_mla_with_kvcache`` call fills ``config`` and ``plan`` and later calls must match it
    (reuse it across the layers of one decode step, as with FlashMLA). The older form
    ``get_mla_metadata(cache_seqlens, ...)`` fills ``plan`` at once.

    The schedule holds the project's decode plan (mla::DecodePlan, DESIGN §5): made once, from
    the first call's (or the older form's) ``cache_seqlens``, and reused by every later call
    without planning again. A call with other lengths, another batch or other head counts is
    refused (ValueError naming the difference): make a new schedule for each decode step.

    ``plan`` shows the plan's work split: ``num_workers``, ``worker_offsets``, ``items`` [n, 6]
    (seq, head_begin, head_end, kv_begin, kv_end, partial slot or -1), ``num_partials``,
    ``num_splits`` [b + 1].
    """

    @dataclasses.dataclass
    class Config:
        b: int
        s_q: int
        h_q: int
        page_block_size: int
        h_k: int
        causal: bool
        is_fp8_kvcache: bool = False
        topk: Optional[int] = None

    have_initialized: bool = False
    config: Optional[Config] = None
    plan: Optional[dict] = None
    threads: int = 0
    num_q_tokens_per_head_k: Optional[int] = None
    num_heads_k: Optional[int] = None
    num_heads_q: Optional[int] = None
    _key: Optional[tuple] = dataclasses.field(default=None, repr=False, compare=False)
    _sched: Any = dataclasses.field(default=None, repr=False, compare=False)
    _seqlens: Any = dataclasses.field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if self._sched is None:
            self._sched = _mla.Schedule(self.threads)


def get_mla_metadata(
    cache_seqlens: Any = None,
    num_q_tokens_per_head_k: Optional[int] = None,
    num_heads_k: Optional[int] = None,
    num_heads_q: Optional[int] = None,
    is_fp8_kvcache: bool = False,
    topk: Optional[int] = None,
    *,
    threads: int = 0,
):
    """FlashMLA's ``get_mla_metadata``, both call shapes.

    - ``get_mla_metadata()`` (FlashMLA's newer form) returns ``(FlashMLASchedMeta(), None)``;
      the first ``flash_mla_with_kvcache`` call fills the schedule.
    - ``get_mla_metadata(cache_seqlens, num_q_tokens_per_head_k, num_heads_k[, num_heads_q,
      is_fp8_kvcache, topk])`` (the older form; ``num_q_tokens_per_head_k`` =
      ``s_q * h_q // h_k``) returns ``(schedule, num_splits)``, the plan computed now and
      ``num_splits`` int32 [b + 1] (prefix sums of the pieces each sequence is split into).

    ``threads``: worker threads for the decodes that use this schedule (0: all cores).
    ``is_fp8_kvcache`` does not change the schedule; ``topk`` (sparse attention) is not supported.
    """
    if topk is not None:
        raise ValueError(f"topk = {topk}: sparse attention is not supported")
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 0:
        raise ValueError(f"threads = {threads!r}; expected an int >= 0")
    sched = FlashMLASchedMeta(threads=threads)
    if cache_seqlens is None:
        return sched, None
    for name, v in (("num_q_tokens_per_head_k", num_q_tokens_per_head_k), ("num_heads_k", num_heads_k)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} = {v!r}; expected an int >= 1")
    heads, s_q = num_q_tokens_per_head_k, 1
    if num_heads_q is not None:
        if not isinstance(num_heads_q, int) or num_heads_q < 1 or num_heads_q % num_heads_k:
            raise ValueError(f"num_heads_q = {num_heads_q!r}; expected a positive multiple of num_heads_k = {num_heads_k}")
        heads = num_heads_q // num_heads_k
        if num_q_tokens_per_head_k % heads:
            raise ValueError(
                f"num_q_tokens_per_head_k = {num_q_tokens_per_head_k} is not s_q * num_heads_q // num_heads_k "
                f"for num_heads_q = {num_heads_q}, num_heads_k = {num_heads_k}")
        s_q = num_q_tokens_per_head_k // heads
    seqlens, _ = _as_input(cache_seqlens, "cache_seqlens")
    sched._sched.make(seqlens, None, s_q, heads, threads)
    sched.plan = sched._sched.info
    if num_heads_q is None:
        # s_q and h_q are not known apart: the plan (rows as heads) gives num_splits now, and the
        # first call plans again for its s_q and h_q from these lengths.
        sched._seqlens = np.array(seqlens, dtype=np.int32)
    sched.num_q_tokens_per_head_k = num_q_tokens_per_head_k
    sched.num_heads_k = num_heads_k
    sched.num_heads_q = num_heads_q
    num_splits = sched.plan["num_splits"]
    if _is_torch(cache_seqlens):
        import torch

        num_splits = torch.from_numpy(num_splits)
    return sched, num_splits


def _check_schedule(sched: FlashMLASchedMeta, q_shape, block_size: int, h_k: int, causal: bool, cache_seqlens,
                    q_lens, threads: int) -> None:
    b, s_q, h_q = int(q_shape[0]), int(q_shape[1]), int(q_shape[2])
    cfg = sched.config
    if cfg is None:
        if sched.num_q_tokens_per_head_k is not None:  # made by the older get_mla_metadata form
            if sched.num_heads_k != h_k or sched.num_q_tokens_per_head_k != s_q * h_q // h_k:
                raise ValueError(
                    f"tile_scheduler_metadata was made for num_q_tokens_per_head_k = {sched.num_q_tokens_per_head_k}, "
                    f"num_heads_k = {sched.num_heads_k}; this call has s_q * h_q // h_k = {s_q * h_q // h_k}, h_k = {h_k}")
            if len(sched.plan["num_splits"]) != b + 1:
                raise ValueError(
                    f"tile_scheduler_metadata was made for batch {len(sched.plan['num_splits']) - 1}; q has batch {b}")
            if sched._seqlens is not None:
                sched._sched.make(sched._seqlens, q_lens, s_q, h_q // h_k, sched.threads)
                sched.plan = sched._sched.info
                sched._seqlens = None
        else:
            seqlens, _ = _as_input(cache_seqlens, "cache_seqlens")
            sched._sched.make(seqlens, q_lens, s_q, h_q // h_k, threads)  # the first call's threads
            sched.threads = threads
            sched.plan = sched._sched.info
        sched.config = FlashMLASchedMeta.Config(b, s_q, h_q, block_size, h_k, causal)
        sched.have_initialized = True
        return
    for field, have in (("b", b), ("s_q", s_q), ("h_q", h_q), ("page_block_size", block_size), ("h_k", h_k),
                        ("causal", causal)):
        if getattr(cfg, field) != have:
            raise ValueError(
                f"tile_scheduler_metadata.config.{field} = {getattr(cfg, field)!r} but this call has {have!r}: "
                "a schedule is reused only for calls of the same shapes (one decode step)")


def flash_mla_with_kvcache(
    q: Any,
    k_cache: Any,
    block_table: Any,
    cache_seqlens: Any,
    head_dim_v: int,
    tile_scheduler_metadata: Optional[FlashMLASchedMeta] = None,
    num_splits: Any = None,
    softmax_scale: Optional[float] = None,
    causal: bool = False,
    is_fp8_kvcache: bool = False,
    indices: Any = None,
    *,
    q_lens: Any = None,
    threads: Optional[int] = None,
):
    """FlashMLA's ``flash_mla_with_kvcache`` (dense decoding) on the CPU.

    Arguments:
        q: [b, s_q, h_q, 576], float32 / float16 / bfloat16.
        k_cache: [num_blocks, page_block_size, h_k, 576] bfloat16 / float16 (h_q a multiple of
            h_k; query heads ``i*h_q/h_k .. (i+1)*h_q/h_k - 1`` attend to kv head i), or an
            :class:`LatentCache` (bf16 / fp16 / int8 / fp8, h_k = 1). Any page_block_size.
            With ``is_fp8_kvcache=True``: FlashMLA's fp8 cache, uint8 (or ml_dtypes
            float8_e4m3fn) [num_blocks, page_block_size, 656] or [..., 1, 656], each token 512
            e4m3 + 4 float32 scales + 64 bf16 rope; blocks and tokens at any byte stride
            (FlashMLA's padded blocks), read in place.
            Neither is copied: an array is read in place through its strides (copied once per
            call only when its last dimension is not contiguous).
        block_table: [b, max_blocks] int32; entries past a sequence's length are never read.
        cache_seqlens: [b] int32, tokens per sequence, the s_q new ones included; 0 = padding.
        head_dim_v: 512.
        tile_scheduler_metadata: from :func:`get_mla_metadata` (either form), or None (the
            call is planned alone). Its plan is reused: every call with it must have the same
            shapes and lengths (one decode step).
        num_splits: None or what the older ``get_mla_metadata`` returned (not needed here).
        softmax_scale: default ``q.shape[-1] ** -0.5`` (FlashMLA's default).
        causal: query row i of a sequence of length L sees positions ``0 .. L - s_q + i``;
            ignored when s_q == 1.
        q_lens: [b] int32 or None (beyond FlashMLA): sequence i has only q_lens[i] <= s_q query
            rows; rows past it are padding.
        threads: worker threads (0: all cores); default: the schedule's, else all cores. The
            schedule's plan is made for the threads of its first call (or of get_mla_metadata's
            older form); later calls with other threads are refused.

    Returns:
        (out [b, s_q, h_q, 512] in q's dtype, softmax_lse [b, h_q, s_q] float32 natural log).
        Rows with nothing to attend (cache_seqlens 0, padding rows) give out 0 and lse +inf.

    Raises ValueError / TypeError naming the argument and value for any invalid input, before
    any work. A non-empty sequence must hold at least its query rows (cache_seqlens[i] >= s_q).
    """
    # The common call, checked in as few steps as possible (the overhead benchmark's case): NumPy
    # arrays, a LatentCache, a schedule already set up for these shapes. Everything else, and
    # every error message, goes the general way below.
    sched = tile_scheduler_metadata
    if (type(q) is np.ndarray and type(k_cache) is LatentCache and not k_cache._fp8 and type(block_table) is np.ndarray
            and type(cache_seqlens) is np.ndarray and type(sched) is FlashMLASchedMeta and q_lens is None
            and threads is None and not is_fp8_kvcache and indices is None and head_dim_v == 512):
        shape = q.shape
        if len(shape) == 4 and sched._key == (shape[0], shape[1], shape[2], k_cache._block_size, 1, bool(causal)):
            bits = q.dtype == _BF16
            lse = np.empty((shape[0], shape[2], shape[1]), dtype=np.float32)
            if bits:
                out = np.empty((shape[0], shape[1], shape[2], _HEAD_DIM_V), dtype=np.uint16)
                _mla.decode(q.view(np.uint16), True, k_cache._c, False, block_table, cache_seqlens, None,
                            shape[3] ** -0.5 if softmax_scale is None else float(softmax_scale), bool(causal),
                            sched.threads, sched._sched, out, lse)
                return out.view(_BF16), lse
            out = np.empty((shape[0], shape[1], shape[2], _HEAD_DIM_V), dtype=q.dtype)
            _mla.decode(q, False, k_cache._c, False, block_table, cache_seqlens, None,
                        shape[3] ** -0.5 if softmax_scale is None else float(softmax_scale), bool(causal),
                        sched.threads, sched._sched, out, lse)
            return out, lse
    if indices is not None:
        raise ValueError("indices is given: sparse attention is not supported")
    if head_dim_v != _HEAD_DIM_V:
        raise ValueError(f"head_dim_v = {head_dim_v!r}; expected 512")
    sched = tile_scheduler_metadata
    if sched is not None and type(sched) is not FlashMLASchedMeta:
        raise TypeError(
            f"tile_scheduler_metadata is a {type(sched).__name__}; expected the FlashMLASchedMeta that "
            "mla.get_mla_metadata returns")
    if threads is None:
        threads = sched.threads if sched is not None else 0
    elif type(threads) is not int or threads < 0:
        raise ValueError(f"threads = {threads!r}; expected an int >= 0")
    torch_out = _is_torch(q)
    qa, q_bits = _as_input(q, "q")
    if type(k_cache) is LatentCache:
        if bool(is_fp8_kvcache) != (k_cache.dtype == "fp8"):
            raise ValueError(f"is_fp8_kvcache = {bool(is_fp8_kvcache)} but the LatentCache is {k_cache.dtype}")
        ka, k_bits, h_k, block_size = k_cache._c, False, 1, k_cache._block_size
    else:
        if type(k_cache) is np.ndarray and k_cache.dtype == _FP8:
            k_cache = k_cache.view(np.uint8)  # FlashMLA's tensors are float8_e4m3fn views of the bytes
        ka, k_bits = _as_input(k_cache, "k_cache")
        is_u8 = str(ka.dtype) in ("uint8", "torch.uint8")
        if bool(is_fp8_kvcache) != is_u8:
            raise ValueError(f"is_fp8_kvcache = {bool(is_fp8_kvcache)} with k_cache of dtype {ka.dtype}: the fp8 "
                             f"cache is uint8 (or float8_e4m3fn) [num_blocks, page_block_size, (1,) 656], "
                             f"and only it")
        shape = ka.shape
        h_k = int(shape[2]) if len(shape) == 4 else 1
        block_size = int(shape[1]) if len(shape) == 4 else 0
    bt = block_table if type(block_table) is np.ndarray else _as_input(block_table, "block_table")[0]
    sl = cache_seqlens if type(cache_seqlens) is np.ndarray else _as_input(cache_seqlens, "cache_seqlens")[0]
    ql = None if q_lens is None else _as_input(q_lens, "q_lens")[0]
    causal = bool(causal)
    shape = qa.shape
    if len(shape) != 4:
        raise ValueError(f"q.shape = {tuple(shape)}; expected (batch, seq_len_q, num_heads_q, 576)")
    if softmax_scale is None:
        softmax_scale = shape[3] ** (-0.5)
    b, s_q, h_q = int(shape[0]), int(shape[1]), int(shape[2])
    if sched is not None:
        key = (b, s_q, h_q, block_size, h_k, causal)
        if sched._key != key:
            _check_schedule(sched, shape, block_size, h_k, causal, sl, ql, threads)
            sched._key = key
    if torch_out:
        import torch

        out = torch.empty((b, s_q, h_q, _HEAD_DIM_V), dtype=q.dtype)
        lse = torch.empty((b, h_q, s_q), dtype=torch.float32)
        out_arg = out
    else:
        out = np.empty((b, s_q, h_q, _HEAD_DIM_V), dtype=_BF16 if q_bits else qa.dtype)
        lse = np.empty((b, h_q, s_q), dtype=np.float32)
        out_arg = out.view(np.uint16) if q_bits else out
    _mla.decode(qa, q_bits, ka, k_bits, bt, sl, ql, float(softmax_scale), causal, threads,
                None if sched is None else sched._sched, out_arg, lse)
    return out, lse


class LatentCache:
    """A paged latent KV cache owned by the library (bf16, fp16, int8 or fp8), usable as ``k_cache``.

    Token t of a sequence lives in slot ``block_table[t // block_size] * block_size +
    t % block_size``; each token holds 576 values (512 latent + 64 rope). int8 caches quantize
    the latent with a scale per token or per group of 32 / 64 / 128 channels of each token
    (``scale='group32'`` ...; computed on write), per tensor or per channel (set or calibrated
    before writing); the rope part stays bf16. fp8 is FlashMLA's 656-byte token (docs/FORMATS.md);
    pass ``is_fp8_kvcache=True`` with it; its tile scales are written ``fp8_scale='exact'``
    (max/448 rounded up to 4 significant bits, the default) or ``'pow2'`` (FlashMLA's).

    ``rotation='hadamard'`` stores each token's latent as c R (R = D H / sqrt(512), a fixed +-1
    diagonal times the normalized Walsh-Hadamard matrix; the rope part is never rotated), which
    spreads outlier channels before quantizing; queries and outputs stay in the original space
    (the decode rotates q and un-rotates o), and reads / ``export_f32`` give the original space.

    ``shuffle_seed`` != 0 hands out free blocks in a shuffled order (scattered block tables).
    Writes wait for a decode in progress (decodes release the GIL), so a decode never reads a
    half-written cache.
    """

    def __init__(self, num_blocks: int, block_size: int = 64, dtype: str = "bf16", scale: str = "token",
                 shuffle_seed: int = 0, rotation: str = "none", fp8_scale: str = "exact") -> None:
        self._c = _mla.LatentCache(num_blocks, block_size, dtype, scale, shuffle_seed, rotation, fp8_scale)
        self._block_size = self._c.block_size
        self._fp8 = self._c.dtype == "fp8"  # the fast path in flash_mla_with_kvcache takes no fp8

    num_blocks = property(lambda self: self._c.num_blocks, doc="blocks in the pool")
    block_size = property(lambda self: self._c.block_size, doc="tokens per block")
    dtype = property(lambda self: self._c.dtype, doc="'bf16', 'fp16', 'int8' or 'fp8'")
    scale = property(lambda self: self._c.scale, doc="int8 scale mode: 'token', 'group32', 'group64', 'group128', 'tensor' or 'channel'")
    free_blocks = property(lambda self: self._c.free_blocks, doc="blocks not held by any sequence")
    rotation = property(lambda self: self._c.rotation, doc="latent rotation: 'none' or 'hadamard'")
    fp8_scale = property(lambda self: self._c.fp8_scale, doc="fp8 tile scales: 'exact' or 'pow2'")

    def add_sequence(self) -> int:
        """A new empty sequence; returns its id."""
        return self._c.add_sequence()

    def free(self, seq: int) -> None:
        """Returns the sequence's blocks to the pool."""
        self._c.free(seq)

    def seq_len(self, seq: int) -> int:
        return self._c.seq_len(seq)

    def append(self, seq: int, tokens: Any) -> np.ndarray:
        """Appends tokens [n, 576] (float32/float16/bfloat16) to sequence ``seq``, allocating blocks
        as needed; returns their slots (int64 [n]). Running out of blocks raises ValueError and
        changes nothing."""
        t, bits = _as_input(tokens, "tokens")
        return self._c.append(seq, t, bits)

    def write(self, slot_mapping: Any, tokens: Any) -> None:
        """Writes tokens [n, 576] at the given slots (int64 [n]), vLLM's slot mapping."""
        s, _ = _as_input(slot_mapping, "slot_mapping")
        t, bits = _as_input(tokens, "tokens")
        self._c.write(s, t, bits)

    def slot_mapping(self, seq: int, positions: Sequence[int]) -> np.ndarray:
        """Slots (int64) of the given token positions of sequence ``seq``."""
        return self._c.slot_mapping(seq, list(positions))

    def block_table(self, seqs: Sequence[int], min_blocks: int = 1) -> np.ndarray:
        """Block tables of the given sequences, int32 [len(seqs), max(blocks, min_blocks)], -1 padded."""
        return self._c.block_table(list(seqs), min_blocks)

    def seq_lens(self, seqs: Sequence[int]) -> np.ndarray:
        """Lengths (int32) of the given sequences: ``cache_seqlens`` for them."""
        return self._c.seq_lens(list(seqs))

    def set_tensor_scale(self, scale: float) -> None:
        """int8, tensor mode: the one static scale (positive, finite)."""
        self._c.set_tensor_scale(float(scale))

    def set_channel_scales(self, scales: Any) -> None:
        """int8, channel mode: the static scales, float32 [512] (positive, finite)."""
        self._c.set_channel_scales(np.ascontiguousarray(scales, dtype=np.float32))

    def calibrate(self, tokens: Any) -> None:
        """int8, tensor / channel mode: static scales from max|latent| / 127 over tokens [n, 576]."""
        t, bits = _as_input(tokens, "tokens")
        self._c.calibrate(t, bits)

    def query_values(self, q: Any) -> np.ndarray:
        """The query values the kernels compute with for this cache, float32 [..., 576]: q itself
        for bf16 / fp16 caches (rounded by the caller), for int8 the latent quantized per row as
        the kernels do (a reference on these values sees exactly what the kernels saw)."""
        a = np.ascontiguousarray(np.asarray(q, dtype=np.float32))
        return self._c.query_values(a.reshape(-1, _HEAD_DIM)).reshape(a.shape)

    def export_array(self) -> np.ndarray:
        """The content as the kernels see it, float32 [num_blocks, block_size, 576]."""
        return self._c.export_array()

    def import_array(self, kv: Any) -> None:
        """Fills the whole pool from kv [num_blocks, block_size, 576] (rounded or quantized)."""
        a, bits = _as_input(kv, "kv")
        self._c.import_array(a, bits)

    def export_fp8(self) -> np.ndarray:
        """fp8 only, lossless: FlashMLA's bytes, uint8 [num_blocks, block_size, 656] (usable as an
        array ``k_cache`` with ``is_fp8_kvcache=True``)."""
        return self._c.export_fp8()

    def import_fp8(self, data: Any) -> None:
        """fp8 only: fills the whole pool from FlashMLA's bytes [num_blocks, block_size, 656]
        (uint8 or float8_e4m3fn); a tile scale that is not positive and finite is refused."""
        a = np.asarray(data)
        if a.dtype == _FP8:
            a = a.view(np.uint8)
        if a.dtype != np.uint8:
            raise TypeError(f"fp8 data has dtype {a.dtype}; expected uint8 or float8_e4m3fn")
        if a.shape != (self.num_blocks, self.block_size, _FP8_TOKEN):
            raise ValueError(f"fp8 data has shape {a.shape}; expected {(self.num_blocks, self.block_size, _FP8_TOKEN)}")
        self._c.import_fp8(np.ascontiguousarray(a))

    def export_int8(self) -> dict:
        """int8 only, lossless: latent int8 [nb, bs, 512], rope bfloat16 [nb, bs, 64], and the
        scales: token_scale float32 [nb, bs] (token mode) or [nb, bs, 512 // group] (group
        modes; entry g scales channels ``g*group .. (g+1)*group - 1``) / tensor_scale float /
        channel_scale float32 [512] (None where the mode has none)."""
        d = self._c.export_int8()
        d["rope"] = d["rope"].view(_BF16)
        return d

    def import_int8(self, latent: Any, rope: Any, token_scale: Any = None, tensor_scale: Optional[float] = None,
                    channel_scale: Any = None) -> None:
        """int8 only: the inverse of :meth:`export_int8` (sizes and scales are checked)."""
        rope = np.asarray(rope)
        if rope.dtype != _BF16:
            raise TypeError(f"rope has dtype {rope.dtype}; expected ml_dtypes.bfloat16")
        f32 = lambda x: None if x is None else np.ascontiguousarray(x, dtype=np.float32)  # noqa: E731
        self._c.import_int8(np.ascontiguousarray(latent, dtype=np.int8), np.ascontiguousarray(rope).view(np.uint16),
                            f32(token_scale), None if tensor_scale is None else float(tensor_scale),
                            f32(channel_scale))


class Layer:
    """One attention layer (``self_attn``) of a Hugging Face DeepSeek-V2/V3 checkpoint, for decoding.

    The layer owns a paged latent cache (``num_blocks`` blocks of ``block_size`` tokens, format
    ``kv_dtype``) and its block allocator: sequences are added, prefilled, decoded and freed
    through it. Hidden states are the ``self_attn`` input, float32 NumPy arrays (or any
    buffer-protocol / DLPack CPU array) with last dimension ``hidden_size``; outputs are the
    ``self_attn`` output (after ``o_proj``), float32 NumPy. The library runs with the GIL
    released; bad arguments raise ``ValueError`` naming the value, and a refused call changes
    neither the cache nor any sequence.

    Build one with :meth:`from_pretrained`.
    """

    def __init__(self, impl: "_mla.Layer") -> None:
        self._l = impl

    @classmethod
    def from_pretrained(cls, model_dir: str, layer: int = 0, kv_dtype: str = "bf16", block_size: int = 64,
                        threads: int = 0, num_blocks: int = 1024, kv_rotate: str = "none") -> "Layer":
        """Opens ``model_dir`` (config.json + model.safetensors, or shards with
        model.safetensors.index.json) and checks every tensor of
        ``model.layers.{layer}.self_attn.*`` before returning; weights stay memory-mapped.

        kv_dtype: cache format, ``'bf16'``, ``'fp16'``, ``'int8'`` (per-token scales) or ``'fp8'``
        (FlashMLA's 656-byte token). threads: workers per call (0: all cores). num_blocks: cache
        capacity, shared by all sequences. kv_rotate: ``'none'`` or ``'hadamard'`` (the cache's
        latent rotated, R folded into the layer's absorbed projections; docs/LAYER.md).
        """
        return cls(_mla.Layer(str(model_dir), int(layer), kv_dtype, int(block_size), int(num_blocks),
                              int(threads), kv_rotate))

    hidden_size = property(lambda self: self._l.hidden_size, doc="the model's hidden_size")
    num_heads = property(lambda self: self._l.num_heads, doc="attention heads")
    kv_dtype = property(lambda self: self._l.kv_dtype, doc="cache format")
    block_size = property(lambda self: self._l.block_size, doc="tokens per cache block")
    num_blocks = property(lambda self: self._l.num_blocks, doc="blocks in the cache")
    free_blocks = property(lambda self: self._l.free_blocks, doc="blocks not held by any sequence")
    threads = property(lambda self: self._l.threads, doc="workers per call (0: all cores)")

    def add_sequence(self) -> int:
        """A new empty sequence; returns its id."""
        return self._l.add_sequence()

    def free(self, seq: int) -> None:
        """Returns the sequence's blocks to the pool; its id is no longer valid."""
        self._l.free(seq)

    def seq_len(self, seq: int) -> int:
        """Tokens the sequence holds in the cache."""
        return self._l.seq_len(seq)

    def prefill(self, seq: int, hidden: Any) -> None:
        """Writes the history ``hidden`` [n, hidden_size] float32 of sequence ``seq`` into the
        cache, at positions ``seq_len(seq) .. seq_len(seq) + n - 1`` (the kv path only: no output).
        """
        self._l.prefill(seq, hidden)

    def decode(self, seqs: Sequence[int], hidden: Any) -> np.ndarray:
        """One decode step: ``hidden`` [B, Q, hidden_size] float32 holds Q new tokens of each of
        the B sequences ``seqs`` (MTP when Q > 1). They are appended to the cache, attend to their
        history and to the new tokens up to themselves, and their ``self_attn`` output
        [B, Q, hidden_size] float32 is returned.
        """
        return self._l.decode([int(s) for s in seqs], hidden)

    __call__ = decode
