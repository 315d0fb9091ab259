"""Half-precision operands reach the SSD kernels (StructuredMatrix._fast_dtype): under bf16 autocast a mixer's
B, C and x are bfloat16 while its decays are float32; the product then runs the kernels in bfloat16
(float32 accumulation) instead of upcasting everything to float32, and still matches the float64 reference
within the bfloat16 budget, gradients included. CPU: the kernels run under the Triton interpreter."""

import pytest
import torch


triton = pytest.importorskip("triton")

import kernels
import structured  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("name", ["semiseparable", "quasiseparable"])
def test_half_generators_run_the_kernels_in_half_and_match_float64(kernels_mode, monkeypatch, name):
    kernels_mode("on")
    seen = []
    real = getattr(kernels, f"{name}_matmul")

    def spy(x, *args, **kw):
        seen.append((x.dtype, args[2].dtype))  # operand dtype and the decays' dtype
        return real(x, *args, **kw)

    monkeypatch.setattr(kernels, f"{name}_matmul", spy)
    torch.manual_seed(3)
    B, L, N, P = 2, 37, 8, 16
    b = (torch.randn(B, L, N, device=DEV) / N ** 0.5).bfloat16().requires_grad_()
    c = torch.randn(B, L, N, device=DEV).bfloat16().requires_grad_()
    log_a = (-torch.rand(B, L, device=DEV) * 0.5).requires_grad_()  # float32, as dt * A is under autocast
    x = torch.randn(B, L, P, device=DEV).bfloat16().requires_grad_()
    extra = (torch.randn(B, L, device=DEV).requires_grad_(),) if name == "quasiseparable" else ()
    M = structured.get(name)(b, c, log_a, *extra, validate=False)
    y = M.matmul(x)
    assert seen and seen[0] == (torch.bfloat16, torch.float32)
    assert y.dtype == torch.float32  # the promoted dtype, computed from bfloat16 operands
    leaves = (x, b, c, log_a) + extra
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    Mr = structured.get(name)(*ref_leaves[1:], validate=False)
    yr = Mr.matmul(ref_leaves[0], method="explicit")
    assert (y.double() - yr).abs().max() <= 2e-2 * yr.abs().max()
    g = torch.randn_like(yr)
    y.backward(g.float())
    yr.backward(g)
    for t, r in zip(leaves, ref_leaves):
        assert (t.grad.double() - r.grad).abs().max() <= 5e-2 * r.grad.abs().max()


def test_float32_generators_keep_float32_operands(kernels_mode, monkeypatch):
    kernels_mode("on")
    seen = []
    real = kernels.semiseparable_matmul
    monkeypatch.setattr(kernels, "semiseparable_matmul", lambda x, *a, **k: seen.append(x.dtype) or real(x, *a, **k))
    b, c = torch.randn(1, 9, 4, device=DEV), torch.randn(1, 9, 4, device=DEV)
    M = structured.get("semiseparable")(b, c, -torch.rand(1, 9, device=DEV), validate=False)
    M.matmul(torch.randn(1, 9, 3, device=DEV).bfloat16())
    assert seen == [torch.float32]


@pytest.mark.parametrize("mixer", ["quasiseparable", "semiseparable", "bidir_add"])
def test_ssm_mixers_under_autocast_send_bf16_operands(kernels_mode, monkeypatch, mixer):
    """End to end through a mixer block: under bf16 autocast the SSM mixers' x and input generators
    b = B dt reach the kernels in bfloat16 (dt comes out of softplus in float32; b must not promote the
    product to float32, as it did before), the decays in float32."""
    import mixers
    kernels_mode("on")
    seen = []
    for name in ("semiseparable_matmul", "quasiseparable_matmul"):
        real = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, lambda x, b, c, log_a, *a, _real=real, **k:
                            seen.append((x.dtype, b.dtype, c.dtype, log_a.dtype)) or _real(x, b, c, log_a, *a, **k))
    torch.manual_seed(0)
    enc = mixers.MixerEncoder(vocab_size=50, d_model=32, n_layers=1, mixer=mixer, sequence_aligned=True,
                              max_seq_len=24, mlp_ratio=0, headdim=8, qk_dim=4).to(DEV)
    with torch.autocast(DEV, dtype=torch.bfloat16):
        out = enc(torch.randint(0, 50, (2, 24), device=DEV))
    out.float().sum().backward()
    half = torch.bfloat16
    assert seen and all(s == (half, half, half, torch.float32) for s in seen), seen


def test_discretize_keeps_the_generator_dtype():
    """CUDA autocast runs softplus in float32 (CPU autocast does not, so the test above cannot see it here):
    with B in bfloat16 and dt_raw in float32, b = B dt stays bfloat16 and log_a float32."""
    import mixers
    m = mixers.get("quasiseparable")(nheads=2, headdim=8, qk_dim=4, sequence_aligned=True, max_seq_len=8)
    dt_raw = torch.randn(2, m.nheads, 8, 1)
    B = torch.randn(2, 1, 8, m.d_state).bfloat16()
    b, log_a = m._discretize(dt_raw, B, None, "")
    assert b.dtype == torch.bfloat16 and log_a.dtype == torch.float32
    assert b.shape == (2, m.nheads, 8, m.d_state)


def test_compile_prefers_torch_only_while_compiling_and_only_in_auto_mode(kernels_mode, monkeypatch):
    """The SSD products hand torch.compile their chunk-parallel torch algorithm (which inductor fuses) in
    auto mode; eager calls and MIXERZOO_KERNELS=on keep the kernels."""
    import types
    import kernels
    cuda_like = types.SimpleNamespace(is_cuda=True)
    monkeypatch.setattr(kernels, "triton_available", lambda: True)
    kernels_mode("auto")
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: False)
    assert kernels.enabled(cuda_like, compile_prefers_torch=True)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert not kernels.enabled(cuda_like, compile_prefers_torch=True)
    assert kernels.enabled(cuda_like)
    kernels_mode("on")
    assert kernels.enabled(cuda_like, compile_prefers_torch=True)
