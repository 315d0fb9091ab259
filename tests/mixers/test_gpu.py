"""The blocks on CUDA (Triton kernels when available): float32 fast path vs the float64 CPU reference,
and padding. Run on a GPU machine: ``python -m pytest tests/mixers/test_gpu.py -m gpu``."""
from __future__ import annotations

import pytest
import torch

import mixers
from mixers import zoo

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

BUILTIN = sorted(n for n in mixers.names() if mixers.get(n).__module__ == zoo.__name__)
COMBOS = [(n, p) for n in BUILTIN for p in mixers.names()[n]]


@pytest.mark.parametrize("name,param", COMBOS, ids=[f"{n}-{p}" for n, p in COMBOS])
def test_cuda_block_matches_cpu_float64(name, param):
    torch.manual_seed(0)
    blk = mixers.MatrixMixerBlock(64, name, param == "sequence_aligned", max_seq_len=200, headdim=32, qk_dim=8)
    u = torch.randn(3, 200, 64, dtype=torch.float64)
    mask = torch.arange(200)[None, :] < torch.tensor([[200], [150], [77]])
    ref = blk.double()(u, mask)
    gpu = blk.float().cuda()
    uc = u.float().cuda().requires_grad_()
    y = gpu(uc, mask.cuda())
    scale = ref.abs().max()
    assert (y.double().cpu() - ref).abs().max() <= 2e-3 * scale
    y.square().sum().backward()
    assert torch.isfinite(uc.grad).all()
    for n, p in gpu.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
    gpu.impl = "explicit"
    assert (gpu(uc, mask.cuda()).double().cpu() - ref).abs().max() <= 2e-3 * scale
