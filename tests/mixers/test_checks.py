"""mixers.checks.check_block_input: dtype, device and non-finite inputs are ValueErrors naming the argument."""
import pytest
import torch

from mixers.checks import check_block_input

F32 = dict(dtype=torch.float32, device="cpu")


def test_accepts_a_good_input():
    check_block_input(torch.randn(2, 5, 4), **F32)
    check_block_input(torch.randn(2, 5, 4, dtype=torch.float64), dtype=torch.float64, device=torch.device("cpu"))


def test_dtype_mismatch_names_the_argument():
    with pytest.raises(ValueError, match=r"^u has dtype torch.float64 but the block's parameters are torch.float32"):
        check_block_input(torch.randn(2, 5, 4, dtype=torch.float64), **F32)
    with pytest.raises(ValueError, match="^x must be a floating-point tensor"):
        check_block_input(torch.ones(2, 5, 4, dtype=torch.long), name="x", **F32)
    with pytest.raises(ValueError, match="must be a torch.Tensor"):
        check_block_input([[1.0]], **F32)


def test_autocast_accepts_lower_precision():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        check_block_input(torch.randn(2, 5, 4, dtype=torch.bfloat16), **F32)


def test_device_mismatch():
    with pytest.raises(ValueError, match=r"^u is on cpu but the block's parameters are on meta"):
        check_block_input(torch.randn(2, 3, 4), dtype=torch.float32, device="meta")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_inputs(bad):
    u = torch.randn(2, 5, 4)
    u[1, 2, 3] = bad
    with pytest.raises(ValueError, match=r"^u has non-finite values"):
        check_block_input(u, **F32)
    with torch.no_grad():  # evaluation of a training-mode module still checks
        with pytest.raises(ValueError):
            check_block_input(u, training=True, **F32)
    check_block_input(u, training=True, **F32)  # training with autograd: skipped (no host sync per step)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
def test_cuda_device_mismatch():
    with pytest.raises(ValueError, match="is on cpu but the block's parameters are on cuda"):
        check_block_input(torch.randn(2, 3, 4), dtype=torch.float32, device="cuda")
    check_block_input(torch.randn(2, 3, 4, device="cuda"), dtype=torch.float32, device="cuda:0")


def test_block_rejects_bad_inputs_with_value_errors():
    """The block names a wrong dtype and refuses non-finite input outside training."""
    import mixers
    block = mixers.MatrixMixerBlock(d_model=16, mixer="toeplitz", sequence_aligned=True, headdim=8, qk_dim=4).eval()
    with pytest.raises(ValueError, match="^u has dtype torch.float64"):
        block(torch.randn(1, 6, 16, dtype=torch.float64))
    u = torch.randn(1, 6, 16)
    u[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="^u has non-finite values"):
        block(u)
