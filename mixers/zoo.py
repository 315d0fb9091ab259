"""The built-in mixers: the matrix classes of the Hydra paper's Table 2 and the bidirectional SSM
variants of its Table 3.

Every mixer is one small :class:`mixers.base.Mixer` subclass: the per-position channels it needs and
the structured matrix it builds from them. The block (:class:`mixers.base.MatrixMixerBlock`) supplies
those channels either from the tokens (sequence-aligned) or from a learned table (fixed).

Notation (per batch element and head): L = sequence length, d = qk_dim, N = d_state, i = row (output
position), j = column (input position), 0-based. ``L_ref`` is the block's ``max_seq_len`` (128 when
None): the paper's code scales by the *runtime* length L, which equals ``max_seq_len`` during its
pretraining; a constant reference keeps each sequence's output independent of the padding of its
batch and of length extension.

Paper: Hwang, Lahoti, Dao, Gu, "Hydra: Bidirectional State Space Models Through Generalized Matrix
Mixers" (arXiv 2407.09941): Section 2.2 / Table 1 (the matrix classes), Section 2.3 (Definition of
sequence-aligned matrices), Section 3 (quasiseparable mixers, Hydra), Table 2, Table 3.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import Channels, Mixer, inverse_softplus
from .registry import register_mixer


def _structured(name: str):
    import structured

    return structured.get(name)


def _mask_positions(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """mask (B, L) -> (B, 1, L, 1) in like's dtype, or None."""
    return None if mask is None else mask.to(like.dtype)[:, None, :, None]


# ================================================================================================ fixed-only
@register_mixer("dense")
class DenseMixer(Mixer):
    """A free L x L matrix per head (Table 1 "Dense"; fixed only, as in the paper).

    ``m_ij = T_h[i, j]`` with T_h a learned ``(max_seq_len, max_seq_len)`` table per head: each position
    i owns the row ``T_h[i, :]`` (``token_channels = {"m": max_seq_len}``); a length-L input uses the
    leading L x L block. Not sequence-aligned: no parameters can be projected from a token for a row of
    unknown length. Initialized N(0, 1/max_seq_len). Cost O(L^2 P).
    """

    structure = "dense"
    parameterizations = ("fixed",)
    sequence_aligned_definition = False

    def token_channels(self):
        return {"m": self.max_seq_len}

    def init_fixed(self, name, table):
        with torch.no_grad():
            table.normal_(0.0, self.max_seq_len ** -0.5)

    def matrix(self, params, length, mask=None):
        return _structured("dense")(params["m"][..., :length])


@register_mixer("dft")
class DFTMixer(Mixer):
    """The fixed cosine (real DFT) matrix, FNet-like (Table 2 "Vandermonde, fixed": the paper's fixed
    Vandermonde mixer always takes its DFT branch).

    ``m_ij = cos(2 pi i j / L) / sqrt(L_ref)``; no parameters (the scale is applied to the values,
    ``value_scale``). Fast product: real FFT, O(L log L P).

    Padding: the matrix depends on the length L itself, so a padded batch is transformed at its
    *padded* length (as FNet does with its fixed-length inputs): padded values are zero and contribute
    nothing, and the pad *content* never matters, but the outputs at real positions differ from those
    of the same sequence run unpadded (cos(2 pi i j / L_padded) != cos(2 pi i j / L_real)). Batches that
    must reproduce unpadded outputs should group sequences of equal length.
    """

    structure = "dft"
    parameterizations = ("fixed",)
    sequence_aligned_definition = False

    def __init__(self, **common):
        super().__init__(**common)
        self.value_scale = self.norm_length ** -0.5

    def token_channels(self):
        return {}

    def matrix(self, params, length, mask=None):
        return _structured("dft")(length, batch_shape=(1, self.nheads), dtype=self._anchor.dtype,
                                  device=self._anchor.device)


# ================================================================================================ both
@register_mixer("toeplitz")
class ToeplitzMixer(Mixer):
    """Toeplitz (convolution) mixer (Table 1 "Toeplitz").

    ``m_ij = s * w_{i-j}`` with ``s = 0.5 / sqrt(L_ref)`` (the paper's scale) and the lag weights taken
    from per-position channels f, g (one each per head): ``w_d = f_d`` for lags d >= 0 and
    ``w_d = g_{-d-1}`` for d < 0. Sequence-aligned: f, g are token projections (through the conv and
    SiLU, like the paper's forward/reverse kernels), so ``M[:i+1, :i+1]`` uses positions 0..i only;
    fixed: a free table, i.e. the free ``(H, 2L-1)`` kernel of the paper (position L-1's g is unused).

    The paper's code reads the diagonal from token 1's forward projection and wraps the corner lag
    L-1 to the reverse kernel (an index quirk of its length-(2L-1) FFT; see the research notes §1.2);
    mixerzoo uses the direct assignment above, whose fixed variant is the same free kernel.
    Fast product: FFT convolution, O(L log L P).
    """

    structure = "toeplitz"

    def token_channels(self):
        return {"f": 1, "g": 1}

    def matrix(self, params, length, mask=None):
        f, g = params["f"][..., 0], params["g"][..., 0]              # (B, H, L)
        w = torch.cat([g[..., : length - 1].flip(-1), f], dim=-1)    # index L-1+d holds w_d
        return _structured("toeplitz")(w * (0.5 / math.sqrt(self.norm_length)))


@register_mixer("vandermonde")
class VandermondeMixer(Mixer):
    """Vandermonde (cosine) mixer in the paper's sequence-aligned form (Table 1 "Vandermonde").

    ``m_ij = s_v * sum_d [cos(2 pi e q_id j) - cos(2 pi e k_jd i)]`` with the angle scale
    ``e = angle_scale`` (1e-3, the paper code's "constant to stabilize training") and the output scale
    ``s_v = 1 / sqrt(2 L_ref d)`` (applied to the values). q, k are raw conv outputs (no SiLU), as in
    the paper. Fixed: learned q, k tables with the same formula (the paper's learned fixed branch is
    unreachable; its fixed Vandermonde is the ``dft`` mixer). Sequence-aligned per the paper's
    Definition (row i uses q_i, column j uses k_j). Fast product: see :class:`structured.vandermonde.Vandermonde`.
    """

    structure = "vandermonde"

    def __init__(self, *, angle_scale: float = 1e-3, **common):
        super().__init__(**common)
        if not (isinstance(angle_scale, (int, float)) and angle_scale > 0):
            raise ValueError(f"angle_scale must be a positive float, got {angle_scale!r}")
        self.angle_scale = float(angle_scale)
        self.value_scale = (2 * self.norm_length * self.qk_dim) ** -0.5

    def token_channels(self):
        return {"q": Channels(self.qk_dim, act=False), "k": Channels(self.qk_dim, act=False)}

    def matrix(self, params, length, mask=None):
        return _structured("vandermonde")(params["q"], params["k"], scale=self.angle_scale)


@register_mixer("cauchy")
class CauchyMixer(Mixer):
    """Cauchy mixer with positive nodes (Table 1 "Cauchy").

    ``m_ij = s * sum_d 1 / (x_id + y_jd)`` with ``x_id = exp(q_id) + beta_h``, ``y_jd = exp(k_jd) + beta_h``,
    ``beta_h = softplus(beta_raw_h) > 0`` a learned per-head offset (init 0.5, the paper's value) and
    ``s = 1 / sqrt(L_ref d)``. The paper's offset is unconstrained (x + y <= 0 is reachable there);
    softplus keeps every denominator > 0, so the structured class is built with ``validate=False``.
    The scale is folded into the nodes: ``s / (x + y) = 1 / (x/s + y/s)``. q, k raw conv outputs (no
    SiLU). Sequence-aligned per the paper's Definition. Fast product: see
    :class:`structured.cauchy.Cauchy` (approximate with a stated bound, or exact tiled).
    """

    structure = "cauchy"

    def __init__(self, **common):
        super().__init__(**common)
        self.offset_raw = nn.Parameter(inverse_softplus(torch.full((self.nheads,), 0.5)))

    def token_channels(self):
        return {"q": Channels(self.qk_dim, act=False), "k": Channels(self.qk_dim, act=False)}

    def matrix(self, params, length, mask=None):
        beta = F.softplus(self.offset_raw).to(params["q"].dtype)[:, None, None]   # (H, 1, 1)
        inv_s = math.sqrt(self.norm_length * self.qk_dim)
        x = (torch.exp(params["q"]) + beta) * inv_s
        y = (torch.exp(params["k"]) + beta) * inv_s
        return _structured("cauchy")(x, y, validate=False)


@register_mixer("low_rank")
class LowRankMixer(Mixer):
    """Low-rank mixer = linear attention without normalization (Table 1 "Low-rank").

    ``m_ij = s * q_i . k_j`` with ``s = 1 / sqrt(L_ref d)`` (folded into q); q, k through conv + SiLU as in
    the paper. Rank <= d. Sequence-aligned per the paper's Definition. Fast product: Q (K^T v),
    O(L d P).
    """

    structure = "low_rank"

    def token_channels(self):
        return {"q": self.qk_dim, "k": self.qk_dim}

    def matrix(self, params, length, mask=None):
        s = 1.0 / math.sqrt(self.norm_length * self.qk_dim)
        return _structured("low_rank")(params["q"] * s, params["k"])


@register_mixer("attention")
class AttentionMixer(Mixer):
    """Softmax attention (Table 1 "Attention"), bidirectional, multi-head.

    ``m_ij = exp(q_i . k_j / sqrt(d)) / sum_{l real} exp(q_i . k_l / sqrt(d))`` for real keys j, 0 for
    padded keys. q, k raw conv outputs (no SiLU), as in the paper. ``impl="fast"`` calls
    :func:`torch.nn.functional.scaled_dot_product_attention` (fused, no L x L tensor where the backend
    allows); ``impl="explicit"`` materializes the softmax matrix. :meth:`matrix` returns it as a
    :class:`structured.dense.Dense`.

    Not sequence-aligned in the strict parameter-level sense: the normalization of row i sums over
    every key, so ``M[:i+1, :i+1]`` changes when keys after i change (the unnormalized kernel
    ``exp(q_i . k_j)`` is). It is data-dependent and extendable like the sequence-aligned classes.
    """

    structure = "dense"
    sequence_aligned_definition = False

    def token_channels(self):
        return {"q": Channels(self.qk_dim, act=False), "k": Channels(self.qk_dim, act=False)}

    def _scores(self, params, mask):
        s = params["q"] @ params["k"].transpose(-1, -2) / math.sqrt(self.qk_dim)
        if mask is not None:
            s = s.masked_fill(~mask[:, None, None, :], float("-inf"))
        return s

    def matrix(self, params, length, mask=None):
        return _structured("dense")(torch.softmax(self._scores(params, mask), dim=-1))

    def apply(self, v, params, mask=None, impl="fast"):
        if impl == "fast":
            q, k = params["q"].expand(*v.shape[:2], -1, -1), params["k"].expand(*v.shape[:2], -1, -1)
            attn_mask = None if mask is None else mask[:, None, None, :]
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=1.0 / math.sqrt(self.qk_dim))
        return super().apply(v, params, mask, impl)


# ================================================================================================ SSMs
class _SSMParams(Mixer):
    """Shared Mamba-2 parameterization of the SSM mixers (Dao & Gu, arXiv 2405.21060, Section 7/8):
    ``dt = softplus(dt_raw + dt_bias)`` per head and position (zero at padded positions),
    ``A = -exp(A_log)`` per head, input generator ``b_j = B_j dt_j``, log-decay ``log a_t = A dt_t``
    (so padded positions have decay 1 and pass the state through unchanged), output generator
    ``c_i = C_i``. Initialization as Mamba-2: A ~ U[1, 16], dt ~ log-uniform[1e-3, 1e-1] (through
    dt_bias, with dt_raw's table at 0 for the fixed parameterization), D = 1."""

    def __init__(self, *, d_state: int | None = None, **common):
        super().__init__(**common)
        d_state = self.qk_dim if d_state is None else d_state
        if isinstance(d_state, bool) or not isinstance(d_state, int) or d_state < 1:
            raise ValueError(f"d_state must be a positive int (default qk_dim), got {d_state!r}")
        self.d_state = d_state

    def _new_dynamics(self, suffix=""):
        H = self.nheads
        A = torch.empty(H).uniform_(1.0, 16.0)
        dt = torch.exp(torch.empty(H).uniform_(math.log(1e-3), math.log(1e-1)))
        self.register_parameter("A_log" + suffix, nn.Parameter(torch.log(A)))
        self.register_parameter("dt_bias" + suffix, nn.Parameter(inverse_softplus(dt)))

    def init_fixed(self, name, table):
        with torch.no_grad():
            if name.startswith("dt"):
                table.zero_()
            else:
                table.normal_()

    def _discretize(self, dt_raw, B, mask, suffix=""):
        """dt_raw (B, H, L, 1), B (B, H, L, N) -> (b, log_a) with b (B, H, L, N), log_a (B, H, L)."""
        dt_bias = getattr(self, "dt_bias" + suffix).to(dt_raw.dtype)
        A = -torch.exp(getattr(self, "A_log" + suffix).to(dt_raw.dtype))
        dt = F.softplus(dt_raw[..., 0] + dt_bias[:, None])                 # (B, H, L)
        if mask is not None:
            dt = dt * mask.to(dt.dtype)[:, None, :]
        return B * dt[..., None], A[:, None] * dt


def _causal_with_skip(b, c, log_a, D):
    """The causal SSM with D skip as one matrix: lower-triangular Quasiseparable (shift=False, zero
    backward generators): m_ij = c_i . b_j exp(sum_{t=j+1..i} log_a_t) (i > j), m_ii = c_i . b_i + D."""
    delta = D.to(b.dtype)[:, None].expand(*log_a.shape)
    zb, zl = torch.zeros_like(b), torch.zeros_like(log_a)
    return _structured("quasiseparable")(b, c, log_a, delta, b_bwd=zb, c_bwd=zb, log_a_bwd=zl, shift=False,
                                         validate=False)


def _anticausal_with_skip(b, c, log_a, D):
    """The reversed (backward) SSM with D skip in the original frame: upper-triangular,
    m_ij = c_i . b_j exp(sum_{t=i..j-1} log_a_t) (i < j), m_ii = c_i . b_i + D."""
    delta = D.to(b.dtype)[:, None].expand(*log_a.shape)
    zb, zl = torch.zeros_like(b), torch.zeros_like(log_a)
    return _structured("quasiseparable")(zb, zb, zl, delta, b_bwd=b, c_bwd=c, log_a_bwd=log_a, shift=False,
                                         validate=False)


def _causal_apply(v, b, c, log_a, D, impl):
    """``(causal SSM + D I) v`` -- fast: one chunked SSD pass (:class:`structured.semiseparable.Semiseparable`)
    plus the skip; explicit: the materialized :func:`_causal_with_skip`."""
    if impl == "fast":
        y = _structured("semiseparable")(b, c, log_a, validate=False).matmul(v)
        return y + D.to(v.dtype)[:, None, None] * v
    return _causal_with_skip(b, c, log_a, D).matmul(v, method="explicit")


def _anticausal_apply(v, b, c, log_a, D, impl):
    """``(reversed SSM + D I) v``: the causal pass on the flipped sequence, flipped back."""
    if impl == "fast":
        return _causal_apply(v.flip(-2), b.flip(-2), c.flip(-2), log_a.flip(-1), D, impl).flip(-2)
    return _anticausal_with_skip(b, c, log_a, D).matmul(v, method="explicit")


@register_mixer("semiseparable")
class SemiseparableMixer(_SSMParams):
    """Causal Mamba-2 SSD (Table 1 "Semiseparable"; the causal baseline of Table 3).

    ``m_ij = C_i . B_j dt_j exp(A sum_{t=j+1..i} dt_t)`` for i > j, ``m_ii = C_i . B_i dt_i + D``, 0 for
    i < j (dt, A, D as in :class:`_SSMParams`). B, C (N = d_state per head, through conv + SiLU like
    Mamba-2's xBC), dt_raw (1 per head, not convolved). Sequence-aligned per the paper's Definition.

    :meth:`matrix` returns the exact applied matrix as a lower-triangular
    :class:`structured.quasiseparable.Quasiseparable` (shift=False, zero backward generators): the D
    skip puts D on the diagonal, which no scalar-decay :class:`~structured.semiseparable.Semiseparable`
    of order N can carry. The fast path is one chunked SSD pass plus ``D v``.
    """

    structure = "quasiseparable"

    def __init__(self, **kw):
        super().__init__(**kw)
        self._new_dynamics()
        self.D = nn.Parameter(torch.ones(self.nheads))

    def token_channels(self):
        N = self.d_state
        return {"B": N, "C": N, "dt": Channels(1, conv=False, act=False)}

    def _gen(self, params, mask):
        b, log_a = self._discretize(params["dt"], params["B"], mask)
        return b, params["C"], log_a

    def matrix(self, params, length, mask=None):
        return _causal_with_skip(*self._gen(params, mask), self.D)

    def apply(self, v, params, mask=None, impl="fast"):
        return _causal_apply(v, *self._gen(params, mask), self.D, impl)


@register_mixer("quasiseparable")
class QuasiseparableMixer(_SSMParams):
    """Hydra's quasiseparable mixer (Section 3; the paper's Table 2 "Quasiseparable" row).

    Shared generators B, C (N = d_state per head, conv + SiLU), a separate dt per direction
    (``dt_f``, ``dt_b``; one ``A`` per head), and a free data-dependent diagonal
    ``delta_i = delta_raw_i + D`` (a token channel plus a per-head bias; the paper projects it from
    the conv output, ``fc_D``). With ``b_j = B_j dt_f_j``, ``b'_j = B_j dt_b_j``:

    ``m_ij = C_{i-1} . b_j exp(A sum_{t=j+1..i-1} dt_f_t)`` (i > j),
    ``m_ii = delta_i``,
    ``m_ij = C_{i+1} . b'_j exp(A sum_{t=i+1..j-1} dt_b_t)`` (i < j).

    Sequence-aligned per the paper's Definition (the shift reads C_{i+1} only for columns j > i).
    Fast product: two chunked SSD passes (:class:`structured.quasiseparable.Quasiseparable`).
    """

    structure = "quasiseparable"

    def __init__(self, **kw):
        super().__init__(**kw)
        self._new_dynamics()
        self.D = nn.Parameter(torch.ones(self.nheads))

    def token_channels(self):
        N = self.d_state
        raw = Channels(1, conv=False, act=False)
        return {"B": N, "C": N, "dt_f": raw, "dt_b": raw, "delta": raw}

    def init_fixed(self, name, table):
        with torch.no_grad():
            if name == "delta":
                table.zero_()
            else:
                super().init_fixed(name, table)

    def matrix(self, params, length, mask=None):
        b, log_a = self._discretize(params["dt_f"], params["B"], mask)
        b_bwd, log_a_bwd = self._discretize(params["dt_b"], params["B"], mask)
        delta = params["delta"][..., 0] + self.D.to(b.dtype)[:, None]
        return _structured("quasiseparable")(b, params["C"], log_a, delta, b_bwd=b_bwd, c_bwd=params["C"],
                                             log_a_bwd=log_a_bwd, shift=True, validate=False)


class _TwoSSMs(_SSMParams):
    """Two independent causal Mamba-2 SSMs, one run forward and one on the reversed sequence
    (Table 3's bidirectional heuristics): separate B, C, dt, A, D per direction."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self._new_dynamics("_f")
        self._new_dynamics("_b")
        self.D_f = nn.Parameter(torch.ones(self.nheads))
        self.D_b = nn.Parameter(torch.ones(self.nheads))

    def token_channels(self):
        N = self.d_state
        raw = Channels(1, conv=False, act=False)
        return {"B_f": N, "C_f": N, "B_b": N, "C_b": N, "dt_f": raw, "dt_b": raw}

    def _gens(self, params, mask):
        b_f, la_f = self._discretize(params["dt_f"], params["B_f"], mask, "_f")
        b_b, la_b = self._discretize(params["dt_b"], params["B_b"], mask, "_b")
        return (b_f, params["C_f"], la_f), (b_b, params["C_b"], la_b)

    def matrices(self, params, length, mask=None):
        """``{"forward": lower-triangular M_f, "backward": upper-triangular M_b}`` (each with its D on
        the diagonal), as :class:`structured.quasiseparable.Quasiseparable` (shift=False)."""
        fwd, bwd = self._gens(params, mask)
        return {"forward": _causal_with_skip(*fwd, self.D_f), "backward": _anticausal_with_skip(*bwd, self.D_b)}

    def _both(self, v, params, mask, impl):
        fwd, bwd = self._gens(params, mask)
        return _causal_apply(v, *fwd, self.D_f, impl), _anticausal_apply(v, *bwd, self.D_b, impl)


@register_mixer("bidir_add")
class BidirAddMixer(_TwoSSMs):
    """Addition-based bidirectional SSM (Table 3 "Add"): ``y = M_f v + M_b v`` = one matrix,
    a quasiseparable matrix with a diagonal tied to the generators (shift=False):

    ``m_ij = C_f,i . b_f,j exp(A_f sum_{t=j+1..i} dt_f,t)`` (i > j),
    ``m_ij = C_b,i . b_b,j exp(A_b sum_{t=i..j-1} dt_b,t)`` (i < j),
    ``m_ii = C_f,i . b_f,i + C_b,i . b_b,i + D_f + D_b``.

    Sequence-aligned per the paper's Definition. Fast product: two chunked SSD passes.
    """

    structure = "quasiseparable"

    def matrix(self, params, length, mask=None):
        (b_f, c_f, la_f), (b_b, c_b, la_b) = self._gens(params, mask)
        delta = (self.D_f + self.D_b).to(b_f.dtype)[:, None].expand(*la_f.shape)
        return _structured("quasiseparable")(b_f, c_f, la_f, delta, b_bwd=b_b, c_bwd=c_b, log_a_bwd=la_b,
                                             shift=False, validate=False)


@register_mixer("bidir_mult")
class BidirMultMixer(_TwoSSMs):
    """Multiplication-based bidirectional SSM (Table 3 "Mult"): ``y = (M_f v) * (M_b v)`` elementwise.

    Quadratic in v, so there is no single mixing matrix: :meth:`matrix` raises ValueError and
    :meth:`matrices` returns ``{"forward": M_f, "backward": M_b}`` (see :class:`BidirAddMixer` for
    their entries). Sequence-aligned per the paper's Definition (each of M_f, M_b is).
    """

    structure = "quasiseparable"
    has_matrix = False

    def matrix(self, params, length, mask=None):
        raise ValueError("mixer 'bidir_mult' has no single mixing matrix: y = (M_f v) * (M_b v) is quadratic in v; "
                         "use matrices() for M_f and M_b")

    def apply(self, v, params, mask=None, impl="fast"):
        y_f, y_b = self._both(v, params, mask, impl)
        return y_f * y_b


@register_mixer("bidir_concat")
class BidirConcatMixer(_TwoSSMs):
    """Concatenation-based bidirectional SSM (Table 3 "Concat"): ``y = W [M_f v ; M_b v]`` per head,
    with W a learned ``(P, 2P)`` projection shared by the heads (initialized ``[I/2, I/2]``, i.e. the
    average of the two directions).

    The projection mixes channels, so no single L x L matrix acts on every channel: :meth:`matrix`
    raises ValueError and :meth:`matrices` returns ``{"forward": M_f, "backward": M_b}``; the block
    output is ``y = (M_f v) W_1^T + (M_b v) W_2^T``.
    """

    structure = "quasiseparable"
    has_matrix = False

    def __init__(self, **kw):
        super().__init__(**kw)
        eye = torch.eye(self.headdim)
        self.combine = nn.Parameter(torch.cat([eye, eye], dim=1) * 0.5)     # (P, 2P)

    def matrix(self, params, length, mask=None):
        raise ValueError("mixer 'bidir_concat' has no single mixing matrix: y = W [M_f v; M_b v] mixes channels; "
                         "use matrices() for M_f and M_b")

    def apply(self, v, params, mask=None, impl="fast"):
        y_f, y_b = self._both(v, params, mask, impl)
        return torch.cat([y_f, y_b], dim=-1) @ self.combine.to(v.dtype).T
