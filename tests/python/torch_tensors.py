"""mla with PyTorch CPU tensors (torch is several GB from PyPI, so this runs on its own, not in the
pytest suite): bf16 / fp16 / fp32 tensors through DLPack, results as tensors of q's dtype, against
the same float64 reference and FlashMLA's tolerances as the NumPy tests.

    python tests/python/torch_tensors.py        # in an environment with mla and torch installed
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import mla  # noqa: E402
from mla_ref import BF16, check_flashmla, make_case, reference, seed_rng  # noqa: E402


def to_torch(a: np.ndarray) -> torch.Tensor:
    if a.dtype == BF16:
        return torch.from_numpy(a.view(np.uint16).astype(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def main() -> int:
    checks = 0
    for dtype, name in ((BF16, "bf16"), (np.float16, "fp16")):
        for s_q, h_q, h_kv in ((1, 16, 1), (2, 128, 1), (4, 64, 1), (2, 9, 3)):
            rng, seed = seed_rng(f"torch{name}{s_q}{h_q}{h_kv}", s_q * 1000 + h_q * 10 + h_kv)
            case = make_case(rng, seed, b=3, s_q=s_q, mean_sk=1024, h_q=h_q, h_kv=h_kv, varlen=True, dtype=dtype,
                             causal=s_q > 1, zero_len=(1,))
            q, k = to_torch(case.q), to_torch(case.k_cache)
            bt, sl = torch.from_numpy(case.block_table), torch.from_numpy(case.cache_seqlens)
            sched, _ = mla.get_mla_metadata()
            out, lse = mla.flash_mla_with_kvcache(q, k, bt, sl, 512, sched, causal=case.causal)
            assert isinstance(out, torch.Tensor) and out.dtype == q.dtype, (type(out), out.dtype)
            assert isinstance(lse, torch.Tensor) and lse.dtype == torch.float32
            ro, rl = reference(case.q, case.k_cache, case.block_table, case.cache_seqlens, case.causal)
            check_flashmla(out.float().numpy(), ro, f"{name} out", seed)
            check_flashmla(lse.numpy(), rl, f"{name} lse", seed)
            checks += 1
    # float32 queries, a non-contiguous q, the older get_mla_metadata form with a torch tensor.
    rng, seed = seed_rng("torchf32", 7)
    case = make_case(rng, seed, b=2, s_q=2, mean_sk=1024, h_q=16, h_kv=1, varlen=True, dtype=BF16, causal=True)
    q32 = to_torch(case.q).float()
    q_strided = torch.zeros(q32.shape[:3] + (2 * 576,))[..., ::2]
    q_strided.copy_(q32)
    sl = torch.from_numpy(case.cache_seqlens)
    sched, num_splits = mla.get_mla_metadata(sl, 2 * 16, 1)
    assert isinstance(num_splits, torch.Tensor) and num_splits.shape == (3,)
    out, lse = mla.flash_mla_with_kvcache(q_strided, to_torch(case.k_cache), torch.from_numpy(case.block_table), sl,
                                          512, sched, num_splits, causal=True)
    assert out.dtype == torch.float32
    ro, rl = reference(case.q, case.k_cache, case.block_table, case.cache_seqlens, True)
    check_flashmla(out.to(torch.bfloat16).float().numpy(), ro, "f32 out", seed)
    check_flashmla(lse.numpy(), rl, "f32 lse", seed)
    checks += 1
    # Bad input: a wrong dtype names the argument.
    try:
        mla.flash_mla_with_kvcache(q32, to_torch(case.k_cache), torch.from_numpy(case.block_table).long(), sl, 512,
                                   None)
        raise AssertionError("an int64 block_table was accepted")
    except TypeError as e:
        assert "block_table has dtype int64" in str(e), e
    checks += 1
    print(f"{checks} passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
