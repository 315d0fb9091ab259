"""The fixed block for every built-in mixer x supported parameterization: shapes, gradients, fast vs
explicit, the matrix it reports, its structure, extendability, padding, error messages."""
from __future__ import annotations

import pytest
import torch

import mixers
from mixers import zoo

BUILTIN = sorted(n for n in mixers.names() if mixers.get(n).__module__ == zoo.__name__)
#: built-in mixers under non-default options that change their parameters, as "name(label)": the older
#: forms that the committed lab results were made with
VARIANTS = {"quasiseparable(older)": ("quasiseparable", {"diagonal": "token", "fixed_dt": "table"}),
            "hydra(shared-bc)": ("hydra", {"bc": "shared"}),
            "cauchy(fixed_offset)": ("cauchy", {"fixed_offset": True})}
COMBOS = [(n, p) for n in BUILTIN + sorted(VARIANTS) for p in mixers.names()[VARIANTS.get(n, (n,))[0]]]
IDS = [f"{n}-{p}" for n, p in COMBOS]
D_MODEL, HEADDIM, QK, MAXLEN = 16, 8, 4, 12


def mixer_class(name):
    return mixers.get(VARIANTS.get(name, (name,))[0])


def make_block(name, parameterization, seed=0, dtype=torch.float64, **kw):
    name, options = VARIANTS.get(name, (name, {}))
    torch.manual_seed(seed)
    blk = mixers.MatrixMixerBlock(D_MODEL, name, parameterization == "sequence_aligned", max_seq_len=MAXLEN,
                                  headdim=HEADDIM, qk_dim=QK, **options, **kw).double()
    # Perturb the learned scalars away from their (often symmetric) initial values so that tests see
    # generic parameters (e.g. D = 1 everywhere would hide a D/head mix-up).
    with torch.no_grad():
        for p in blk.mixer.parameters():
            p.add_(0.1 * torch.randn_like(p))
        for p in blk.tables.values():
            p.add_(0.1 * torch.randn_like(p))
    return blk.to(dtype)


def rand_u(B, L, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, L, D_MODEL, generator=g, dtype=torch.float64).to(dtype)


def test_registry_lists_every_table2_and_table3_mixer():
    want = {"dense", "toeplitz", "dft", "vandermonde", "cauchy", "low_rank", "attention", "semiseparable",
            "quasiseparable", "bidir_add", "bidir_mult", "bidir_concat"}
    assert want <= set(mixers.names())
    assert mixers.names()["dense"] == ("fixed",) and mixers.names()["dft"] == ("fixed",)
    assert set(mixers.names()["quasiseparable"]) == {"fixed", "sequence_aligned"}


@pytest.mark.parametrize("name,param", COMBOS, ids=IDS)
@pytest.mark.parametrize("L", [1, 7, 12])
def test_shape_and_fast_equals_explicit(name, param, L):
    blk = make_block(name, param)
    u = rand_u(2, L)
    y = blk(u)
    assert y.shape == (2, L, D_MODEL) and torch.isfinite(y).all()
    blk.impl = "explicit"
    torch.testing.assert_close(blk(u), y, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name,param", COMBOS, ids=IDS)
def test_float32_fast_matches_float64(name, param):
    u = rand_u(2, 9)
    y64 = make_block(name, param)(u)
    y32 = make_block(name, param, dtype=torch.float32)(u.float())
    torch.testing.assert_close(y32.double(), y64, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name,param", COMBOS, ids=IDS)
def test_gradients_reach_every_parameter_finite_and_fast_equals_explicit(name, param):
    grads = {}
    for impl in ("fast", "explicit"):
        blk = make_block(name, param, impl=impl)
        u = rand_u(2, 7).requires_grad_()
        mask = torch.ones(2, 7, dtype=torch.bool)
        mask[1, 5:] = False
        w = torch.randn(2, 7, D_MODEL, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
        (blk(u, mask) * w).sum().backward()
        assert torch.isfinite(u.grad).all() and u.grad.abs().sum() > 0
        grads[impl] = {"u": u.grad}
        for pname, p in blk.named_parameters():
            assert p.grad is not None, f"{pname} got no gradient"
            assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"
            assert p.grad.abs().sum() > 0, f"{pname} has an all-zero gradient"
            grads[impl][pname] = p.grad
    for k, g in grads["fast"].items():
        torch.testing.assert_close(g, grads["explicit"][k], rtol=1e-9, atol=1e-11, msg=lambda m: f"{k}: {m}")


@pytest.mark.parametrize("name,param", [c for c in COMBOS if mixer_class(c[0]).has_matrix],
                         ids=[i for c, i in zip(COMBOS, IDS) if mixer_class(c[0]).has_matrix])
def test_matrix_reproduces_the_mixing_step_and_has_its_structure(name, param):
    blk = make_block(name, param)
    u = rand_u(2, 10)
    z, v, params = blk.mixer_inputs(u)
    M = blk.matrix(u)
    assert torch.broadcast_shapes(tuple(M.batch_shape), (2, blk.nheads)) == (2, blk.nheads)
    assert M.length == 10
    # The block's whole output from the reported matrix: y = M (s v) (+ v), then gate, norm, out_proj.
    y = M.to_dense() @ (blk.mixer.value_scale * v) + (v if blk.mixer.skip else 0)
    y = y.transpose(1, 2).reshape(2, 10, -1)
    torch.testing.assert_close(blk.out_proj(blk.norm(y, z)), blk(u), rtol=1e-10, atol=1e-12)
    report = M.check_structure()
    assert report.ok, str(report)
    # The materialization must actually use its parameters (a zero matrix passes every rank check).
    assert M.to_dense().abs().amax() > 1e-3


def test_identity_skip_is_on_exactly_the_mixers_whose_paper_code_adds_the_values_back():
    """The paper's dense/toeplitz/vandermonde(+dft)/cauchy/low_rank/attention end with ``+ residual``;
    its SSMs carry D / delta on the diagonal instead."""
    skip = {n for n in BUILTIN if mixers.get(n).skip}
    assert skip == {"dense", "dft", "toeplitz", "vandermonde", "cauchy", "low_rank", "attention"}
    # the skip is really applied: y - M (s v) = v
    blk = make_block("low_rank", "sequence_aligned")
    _, v, params = blk.mixer_inputs(rand_u(2, 6))
    y = blk.mixer.mix(v, params)
    torch.testing.assert_close(y - blk.mixer.matrix(params, 6).to_dense() @ v, v)


@pytest.mark.parametrize("name", ["bidir_mult", "bidir_concat"])
@pytest.mark.parametrize("param", ["fixed", "sequence_aligned"])
def test_multi_matrix_mixers_expose_their_components(name, param):
    blk = make_block(name, param)
    u = rand_u(2, 9)
    with pytest.raises(ValueError, match="no single mixing matrix"):
        blk.matrix(u)
    _, v, params = blk.mixer_inputs(u)
    mats = blk.matrices(u)
    Mf, Mb = mats["forward"].to_dense(), mats["backward"].to_dense()
    assert torch.all(torch.triu(Mf, 1) == 0) and torch.all(torch.tril(Mb, -1) == 0)
    yf, yb = Mf @ v, Mb @ v
    if name == "bidir_mult":
        want = yf * yb
    else:
        W = blk.mixer.combine
        want = yf @ W[:, :HEADDIM].T + yb @ W[:, HEADDIM:].T
    torch.testing.assert_close(blk.mixer.apply(v, params, None, "fast"), want, rtol=1e-10, atol=1e-12)
    for M in mats.values():
        assert M.check_structure().ok


@pytest.mark.parametrize("param", ["fixed", "sequence_aligned"])
def test_semiseparable_block_matrix_is_causal_with_d_skip(param):
    blk = make_block("semiseparable", param, d_state=2)
    M = blk.matrix(rand_u(2, 9)).to_dense()
    assert torch.all(torch.triu(M, 1) == 0)
    from structured import properties as P
    order, _ = P.semiseparable_order(M)
    assert int(order.max()) <= 2 + 1                           # N from B C^T, +1 from the D skip
    assert int(order.max()) >= 2                               # ... and the state is really used


@pytest.mark.parametrize("param", ["fixed", "sequence_aligned"])
def test_ssm_state_is_shared_by_the_heads_and_bounds_the_qs_order(param):
    """Hydra's code: one B, C group for all heads (ngroups = 1), N = nheads * qk_dim by default."""
    assert make_block("quasiseparable", param).mixer.d_state == (2 * D_MODEL // HEADDIM) * QK
    blk = make_block("quasiseparable", param, d_state=2)
    u = rand_u(2, 9)
    _, _, params = blk.mixer_inputs(u)
    assert params["B"].shape == params["C"].shape == (2, 1, 9, 2)
    from structured import properties as P
    order, _ = P.quasiseparable_order(blk.matrix(u).to_dense())
    assert int(order.max()) == 2                               # <= d_state, and attained


def test_quasiseparable_block_has_free_diagonal_and_addition_does_not():
    """Hydra's matrix: diagonal = delta (independent of B, C); add: diagonal tied to the generators."""
    u = rand_u(2, 8)
    qs = make_block("quasiseparable", "sequence_aligned")
    M = qs.matrix(u)
    _, _, params = qs.mixer_inputs(u)
    want = params["delta"][..., 0] + qs.mixer.D[:, None]
    torch.testing.assert_close(torch.diagonal(M.to_dense(), dim1=-2, dim2=-1), want)
    add = make_block("bidir_add", "sequence_aligned")
    Ma = add.matrix(u).to_dense()
    _, _, p = add.mixer_inputs(u)
    fwd, bwd = add.mixer._gens(p, None)
    tied = (fwd[0] * fwd[1]).sum(-1) + (bwd[0] * bwd[1]).sum(-1) + (add.mixer.D_f + add.mixer.D_b)[:, None]
    torch.testing.assert_close(torch.diagonal(Ma, dim1=-2, dim2=-1), tied)


# ------------------------------------------------------------------------------------------ length
@pytest.mark.parametrize("name,param", COMBOS, ids=IDS)
def test_extendability(name, param):
    blk = make_block(name, param)
    u = rand_u(1, 2 * MAXLEN)
    if param == "sequence_aligned":
        y = blk(u)
        assert y.shape == (1, 2 * MAXLEN, D_MODEL) and torch.isfinite(y).all()
    else:
        with pytest.raises(ValueError) as e:
            blk(u)
        msg = str(e.value)
        assert "not extendable" in msg and f"L={2 * MAXLEN}" in msg and f"max_seq_len={MAXLEN}" in msg


# ------------------------------------------------------------------------------------------ padding
PAD_COMBOS = [c for c in COMBOS if c[0] != "dft"]


@pytest.mark.parametrize("name,param", PAD_COMBOS, ids=[f"{n}-{p}" for n, p in PAD_COMBOS])
@pytest.mark.parametrize("impl", ["fast", "explicit"])
def test_padding_gives_the_unpadded_outputs(name, param, impl):
    blk = make_block(name, param, impl=impl)
    lengths, Lpad = [7, 4], 11
    u = rand_u(2, Lpad, seed=3)                       # random content at the padded positions too
    mask = torch.arange(Lpad)[None, :] < torch.tensor(lengths)[:, None]
    y = blk(u, mask)
    for b, n in enumerate(lengths):
        ref = blk(u[b:b + 1, :n])
        torch.testing.assert_close(y[b:b + 1, :n], ref, rtol=1e-10, atol=1e-12)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name,param", COMBOS, ids=IDS)
def test_mixer_inputs_take_the_in_projection_dtype_under_autocast(name, param):
    """Under bf16 autocast the values, the token channels and the fixed tables all reach the mixer in
    bfloat16, padded or not: a float32 mask factor or table would promote the whole product to float32
    (off the tensor cores in the SSM scans)."""
    blk = make_block(name, param, dtype=torch.float32)
    u = rand_u(2, 9, dtype=torch.float32)
    mask = torch.arange(9)[None, :] < torch.tensor([9, 5])[:, None]
    for m in (None, mask):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, v, params = blk.mixer_inputs(u, m)
        assert v.dtype == torch.bfloat16
        assert {n: t.dtype for n, t in params.items()} == {n: torch.bfloat16 for n in params}


@pytest.mark.parametrize("name,param", [c for c in PAD_COMBOS if mixer_class(c[0]).has_matrix],
                         ids=[f"{n}-{p}" for n, p in PAD_COMBOS if mixer_class(n).has_matrix])
def test_padded_matrix_leading_block_equals_unpadded_matrix(name, param):
    blk = make_block(name, param)
    u = rand_u(1, 10, seed=4)
    mask = torch.arange(10)[None, :] < 6
    M_pad = blk.matrix(u, mask).to_dense()
    M = blk.matrix(u[:, :6]).to_dense()
    torch.testing.assert_close(M_pad[..., :6, :6], M, rtol=1e-10, atol=1e-12)


def test_dft_padding_is_documented_behaviour():
    """dft transforms at the padded length: pad content never matters, pad positions contribute
    nothing, but outputs differ from the unpadded run (its matrix depends on L)."""
    blk = make_block("dft", "fixed")
    u = rand_u(1, 11, seed=5)
    mask = torch.arange(11)[None, :] < 7
    u2 = u.clone()
    u2[:, 7:] = torch.randn(1, 4, D_MODEL, dtype=torch.float64) * 10
    y1, y2 = blk(u, mask), blk(u2, mask)
    torch.testing.assert_close(y1[:, :7], y2[:, :7], rtol=1e-12, atol=1e-12)
    assert not torch.allclose(y1[:, :7], blk(u[:, :7]), atol=1e-6)
    # ... and equals the unmasked run of the sequence padded with zero values at the mixing step
    _, v, _ = blk.mixer_inputs(u, mask)
    assert torch.all(v[:, :, 7:] == 0)


def test_attention_padding_masks_keys():
    blk = make_block("attention", "sequence_aligned")
    u = rand_u(1, 9)
    mask = torch.arange(9)[None, :] < 5
    M = blk.matrix(u, mask).to_dense()
    assert torch.all(M[..., 5:] == 0)
    torch.testing.assert_close(M.sum(-1), torch.ones_like(M.sum(-1)))


# ------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("name", ["dense", "dft"])
def test_unsupported_parameterization_names_the_supported_ones(name):
    with pytest.raises(ValueError, match=r"does not support the sequence_aligned.*supports: fixed"):
        mixers.MatrixMixerBlock(D_MODEL, name, True, max_seq_len=MAXLEN, headdim=HEADDIM)


def test_bad_arguments_raise_named_errors():
    with pytest.raises(KeyError, match="unknown mixer 'nope'.*attention"):
        mixers.MatrixMixerBlock(D_MODEL, "nope", True, headdim=HEADDIM)
    with pytest.raises(ValueError, match="max_seq_len is required"):
        mixers.MatrixMixerBlock(D_MODEL, "low_rank", False, headdim=HEADDIM)
    with pytest.raises(ValueError, match="headdim=5 must divide"):
        mixers.MatrixMixerBlock(D_MODEL, "low_rank", True, headdim=5)
    with pytest.raises(ValueError, match="d_conv must be odd"):
        mixers.MatrixMixerBlock(D_MODEL, "low_rank", True, headdim=HEADDIM, d_conv=4)
    with pytest.raises(ValueError, match="impl must be one of"):
        mixers.MatrixMixerBlock(D_MODEL, "low_rank", True, headdim=HEADDIM, impl="quick")
    with pytest.raises(ValueError, match=r"unknown keyword argument\(s\) \['d_stat'\].*d_state"):
        mixers.MatrixMixerBlock(D_MODEL, "quasiseparable", True, headdim=HEADDIM, d_stat=4)
    with pytest.raises(ValueError, match="d_state must be a positive int"):
        mixers.MatrixMixerBlock(D_MODEL, "quasiseparable", True, headdim=HEADDIM, d_state=0)
    with pytest.raises(ValueError, match="sequence_aligned must be True or False"):
        mixers.MatrixMixerBlock(D_MODEL, "low_rank", "yes", headdim=HEADDIM)
    blk = mixers.MatrixMixerBlock(D_MODEL, "low_rank", True, headdim=HEADDIM)
    with pytest.raises(ValueError, match=r"u must be a tensor of shape \(B, L, d_model=16\)"):
        blk(torch.randn(2, 5, 8))
    with pytest.raises(ValueError, match="mask must have dtype torch.bool"):
        blk(torch.randn(2, 5, D_MODEL), torch.ones(2, 5))
    with pytest.raises(ValueError, match=r"mask must be a bool tensor of shape \(B, L\)=\(2, 5\)"):
        blk(torch.randn(2, 5, D_MODEL), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"rows \[1\] are all padding"):
        blk(torch.randn(2, 5, D_MODEL), torch.tensor([[True] * 5, [False] * 5]))


def test_mixer_scalings_follow_the_reference_length_not_the_padding():
    """The paper's 1/sqrt(L) scalings use max_seq_len, so a longer max_seq_len shrinks low-rank's matrix."""
    torch.manual_seed(0)
    a = mixers.MatrixMixerBlock(D_MODEL, "low_rank", True, max_seq_len=16, headdim=HEADDIM, qk_dim=QK).double()
    b = mixers.MatrixMixerBlock(D_MODEL, "low_rank", True, max_seq_len=64, headdim=HEADDIM, qk_dim=QK).double()
    b.load_state_dict(a.state_dict())
    u = rand_u(1, 6)
    torch.testing.assert_close(a.matrix(u).to_dense(), 2 * b.matrix(u).to_dense())


def test_left_padded_mask_is_a_clear_error():
    blk = mixers.MatrixMixerBlock(16, "low_rank", True, headdim=8, qk_dim=4)
    u = torch.randn(2, 6, 16)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, :2] = False  # left padding in row 1
    with pytest.raises(ValueError, match=r"right-padded.*rows \[1\]"):
        blk(u, mask)


@pytest.mark.parametrize("mixer", ["attention", "quasiseparable"])
def test_mixer_inputs_have_unit_stride_in_their_last_dim(mixer):
    """SDPA's fused kernels need stride 1 in the last dim of q, k, v (else the math backend and its L x L
    tensor run), and the scans' loads coalesce only then."""
    block = mixers.MatrixMixerBlock(32, mixer, True, max_seq_len=16, headdim=8, qk_dim=4)
    _, v, params = block.mixer_inputs(torch.randn(2, 16, 32))
    assert v.stride(-1) == 1
    for name, p in params.items():
        assert p.stride(-1) == 1, name


def test_an_unknown_mixer_name_is_a_value_error_listing_the_registered_ones():
    """An unknown mixer name is a ValueError listing the registered mixers; it is a KeyError too, for code
    that catches the registry's error."""
    for kwargs in ({"headdim": HEADDIM}, {}):   # the name is checked before the shape (default headdim 64)
        with pytest.raises(ValueError) as e:
            mixers.MatrixMixerBlock(16, "nosuch", True, **kwargs)
        assert isinstance(e.value, KeyError) and isinstance(e.value, mixers.UnknownMixerError)
        assert str(e.value).startswith("mixer: unknown mixer 'nosuch'; registered: ")
        assert all(name in str(e.value) for name in mixers.names())
    with pytest.raises(ValueError, match="mixer: unknown mixer 'nosuch'"):
        mixers.MixerEncoder(vocab_size=10, d_model=16, n_layers=1, mixer="nosuch", sequence_aligned=True,
                            max_seq_len=8, headdim=8)


@pytest.mark.parametrize("mixer", ["quasiseparable", "attention"])
def test_compiled_block_convolves_like_the_eager_block(mixer, monkeypatch):
    """Under torch.compile the block's depthwise conv is a sum of shifted copies (what inductor fuses) and Hydra's
    product the chunk-parallel form with B, C shared by the heads (chunks of 4 here, so that states pass between
    chunks); traced with aot_eager, the block's output and every parameter's gradient equal the eager block's
    (nn.Conv1d, the blocked CPU product) in float64."""
    import structured
    monkeypatch.setattr(structured.get("quasiseparable"), "chunk_size", 4)
    torch.manual_seed(3)
    block = mixers.MatrixMixerBlock(16, mixer, True, expand=2, headdim=8, qk_dim=4, d_conv=5).double()
    u = torch.randn(2, 11, 16, dtype=torch.float64)
    eager = block(u)
    g_eager = torch.autograd.grad(eager.square().sum(), list(block.parameters()))
    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)(u)
    g_comp = torch.autograd.grad(compiled.square().sum(), list(block.parameters()))
    torch.testing.assert_close(compiled, eager, rtol=1e-12, atol=1e-12)
    for (name, _), a, b in zip(block.named_parameters(), g_comp, g_eager):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11, msg=name)
