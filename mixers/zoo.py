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

Identity skip: the paper's code ends every non-SSM mixer with ``+ residual`` (its input values), so the
mixing step of dense, dft, toeplitz, vandermonde, cauchy, low_rank and attention is ``y = M (s v) + v``
(``Mixer.skip``; ``block.matrix(u)`` is M itself, the class whose structure is tested). The SSM mixers
carry the skip in their diagonal instead (Mamba-2's D, Hydra's delta).

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


def _xavier_std(fan_in: int, fan_out: int) -> float:
    """sqrt(2 / (fan_in + fan_out)): the paper's code initializes its fixed tables with Xavier
    (Glorot) initialization; the fans are those torch computes for the paper's table shapes."""
    return math.sqrt(2.0 / (fan_in + fan_out))


# ================================================================================================ fixed-only
@register_mixer("dense")
class DenseMixer(Mixer):
    """A free L x L matrix per head (Table 1 "Dense"; fixed only, as in the paper).

    ``m_ij = T_h[i, j]`` with T_h a learned ``(max_seq_len, max_seq_len)`` table per head: each position
    i owns the row ``T_h[i, :]`` (``token_channels = {"m": max_seq_len}``); a length-L input uses the
    leading L x L block. Mixing step ``y = M v / sqrt(L_ref) + v`` (the paper's scale and skip). Not
    sequence-aligned: no parameters can be projected from a token for a row of unknown length.
    Initialized as the paper's code (Xavier-normal of the ``(H, L_max, L_max)`` table,
    std ``sqrt(2 / (L_max^2 + H L_max))``). Cost O(L^2 P).
    """

    structure = "dense"
    parameterizations = ("fixed",)
    sequence_aligned_definition = False
    skip = True

    def __init__(self, **common):
        super().__init__(**common)
        self.value_scale = self.norm_length ** -0.5

    def token_channels(self):
        L = self.max_seq_len
        return {"m": Channels(L, init_std=_xavier_std(L * L, self.nheads * L))}     # paper: M (H, L, L)

    def matrix(self, params, length, mask=None):
        return _structured("dense")(params["m"][..., :length])


@register_mixer("dft")
class DFTMixer(Mixer):
    """The fixed cosine (real DFT) matrix, FNet-like (Table 2 "Vandermonde, fixed": the paper's fixed
    Vandermonde mixer always takes its DFT branch).

    ``m_ij = cos(2 pi i j / L)``, mixing step ``y = M v / sqrt(L_ref) + v`` (the paper's scale and
    skip); no parameters. Fast product: real FFT, O(L log L P).

    Padding: the matrix depends on the length L itself, so a padded batch is transformed at its
    *padded* length (as FNet does with its fixed-length inputs): padded values are zero and contribute
    nothing, and the pad *content* never matters, but the outputs at real positions differ from those
    of the same sequence run unpadded (cos(2 pi i j / L_padded) != cos(2 pi i j / L_real)). Batches that
    must reproduce unpadded outputs should group sequences of equal length.
    """

    structure = "dft"
    parameterizations = ("fixed",)
    sequence_aligned_definition = False
    skip = True

    def __init__(self, **common):
        super().__init__(**common)
        self.value_scale = self.norm_length ** -0.5

    def token_channels(self):
        return {}

    def matrix(self, params, length, mask=None):
        return _structured("dft")(length, batch_shape=(1, self.nheads), dtype=self._anchor.dtype,
                                  device=self._anchor.device)


def _qk_channels(mixer: Mixer, act: bool) -> dict[str, Channels]:
    """q and k, qk_dim per head; fixed tables initialized like the paper's (L, H, d) q/k tables."""
    ch = Channels(mixer.qk_dim, act=act, init_std=_xavier_std(mixer.nheads * mixer.qk_dim,
                                                              mixer.norm_length * mixer.qk_dim))
    return {"q": ch, "k": ch}


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
    Mixing step ``y = M v + v`` (the paper's skip). Fast product: FFT convolution, O(L log L P).
    """

    structure = "toeplitz"
    skip = True

    def token_channels(self):
        ch = Channels(1, init_std=_xavier_std(2 * self.norm_length - 1, self.nheads))   # paper: (H, 2L-1)
        return {"f": ch, "g": ch}

    def matrix(self, params, length, mask=None):
        f, g = params["f"][..., 0], params["g"][..., 0]              # (B, H, L)
        w = torch.cat([g[..., : length - 1].flip(-1), f], dim=-1)    # index L-1+d holds w_d
        return _structured("toeplitz")(w * (0.5 / math.sqrt(self.norm_length)))


@register_mixer("vandermonde")
class VandermondeMixer(Mixer):
    """Vandermonde (cosine) mixer in the paper's sequence-aligned form (Table 1 "Vandermonde").

    ``m_ij = sum_d [cos(2 pi e q_id j) - cos(2 pi e k_jd i)]`` with the angle scale ``e = angle_scale``
    (1e-3, the paper code's "constant to stabilize training"); mixing step ``y = s_v M v + v`` with
    ``s_v = 1 / sqrt(2 L_ref d)`` (the paper's scale and skip). q, k are raw conv outputs (no SiLU), as
    in the paper. Fixed: learned q, k tables with the same formula (the paper's learned fixed branch is
    unreachable; its fixed Vandermonde is the ``dft`` mixer). Sequence-aligned per the paper's
    Definition (row i uses q_i, column j uses k_j). Fast product: see :class:`structured.vandermonde.Vandermonde`.
    """

    structure = "vandermonde"
    skip = True

    def __init__(self, *, angle_scale: float = 1e-3, **common):
        super().__init__(**common)
        if not (isinstance(angle_scale, (int, float)) and angle_scale > 0):
            raise ValueError(f"angle_scale must be a positive float, got {angle_scale!r}")
        self.angle_scale = float(angle_scale)
        self.value_scale = (2 * self.norm_length * self.qk_dim) ** -0.5

    def token_channels(self):
        return {"q": Channels(self.qk_dim, act=False), "k": Channels(self.qk_dim, act=False)}

    def matrix(self, params, length, mask=None):
        # validate=False: the finiteness check reads two flags back from the GPU (a host sync per layer and
        # step); q, k are the conv's outputs, finite unless training has already diverged, which the trainer
        # detects in the loss (as the other mixers that build their matrices from activations do)
        return _structured("vandermonde")(params["q"], params["k"], scale=self.angle_scale, validate=False)


@register_mixer("cauchy")
class CauchyMixer(Mixer):
    """Cauchy mixer with positive nodes (Table 1 "Cauchy").

    ``m_ij = s * sum_d 1 / (x_id + y_jd)`` with ``s = 1 / sqrt(L_ref d)`` and q, k raw conv outputs (no
    SiLU), as in the paper's code:

    - sequence-aligned: ``x_id = exp(q_id) + beta_h``, ``y_jd = exp(k_jd) + beta_h``,
      ``beta_h = softplus(beta_raw_h) > 0`` a learned per-head offset (init 0.5, the paper's value; the
      paper's offset is one unconstrained scalar, so x + y <= 0 is reachable there, while softplus keeps
      every denominator > 0);
    - fixed: learned q, k tables with no offset, ``x_id = exp(q_id)``, ``y_jd = exp(k_jd)`` (the paper's
      fixed variant). Option ``fixed_offset=True`` keeps the per-head offset in the fixed
      parameterization too (one formula for both; the form of the committed lab results).

    Every denominator is positive, so the structured class is built with ``validate=False``. The scale is
    folded into the nodes: ``s / (x + y) = 1 / (x/s + y/s)``; mixing step ``y = M v + v`` (the paper's
    skip). Sequence-aligned per the paper's Definition. Fast product: see :class:`structured.cauchy.Cauchy`
    (approximate with a stated bound, or exact tiled).
    """

    structure = "cauchy"
    skip = True

    def __init__(self, *, fixed_offset: bool = False, **common):
        super().__init__(**common)
        if not isinstance(fixed_offset, bool):
            raise ValueError(f"fixed_offset must be True or False for mixer 'cauchy', got {fixed_offset!r}")
        self.fixed_offset = fixed_offset
        # an offset the matrix never reads would be a parameter without a gradient
        if self.sequence_aligned or fixed_offset:
            self.offset_raw = nn.Parameter(inverse_softplus(torch.full((self.nheads,), 0.5)))

    def token_channels(self):
        return _qk_channels(self, act=False)

    def matrix(self, params, length, mask=None):
        inv_s = math.sqrt(self.norm_length * self.qk_dim)
        x, y = torch.exp(params["q"]), torch.exp(params["k"])
        if hasattr(self, "offset_raw"):
            beta = F.softplus(self.offset_raw).to(x.dtype)[:, None, None]   # (H, 1, 1)
            x, y = x + beta, y + beta
        return _structured("cauchy")(x * inv_s, y * inv_s, validate=False)


@register_mixer("low_rank")
class LowRankMixer(Mixer):
    """Low-rank mixer = linear attention without normalization (Table 1 "Low-rank").

    ``m_ij = s * q_i . k_j`` with ``s = 1 / sqrt(L_ref d)`` (folded into q); q, k through conv + SiLU as in
    the paper. Rank <= d. Mixing step ``y = M v + v`` (the paper's skip). Sequence-aligned per the
    paper's Definition. Fast product: Q (K^T v), O(L d P).
    """

    structure = "low_rank"
    skip = True

    def token_channels(self):
        return _qk_channels(self, act=True)

    def matrix(self, params, length, mask=None):
        s = 1.0 / math.sqrt(self.norm_length * self.qk_dim)
        return _structured("low_rank")(params["q"] * s, params["k"])


@register_mixer("attention")
class AttentionMixer(Mixer):
    """Softmax attention (Table 1 "Attention"), bidirectional, multi-head.

    ``m_ij = exp(q_i . k_j / sqrt(d)) / sum_{l real} exp(q_i . k_l / sqrt(d))`` for real keys j, 0 for
    padded keys. q, k raw conv outputs (no SiLU), as in the paper; mixing step ``y = M v + v`` (the
    paper's skip). ``impl="fast"`` calls
    :func:`torch.nn.functional.scaled_dot_product_attention` (fused, no L x L tensor where the backend
    allows); ``impl="explicit"`` materializes the softmax matrix. :meth:`matrix` returns it as a
    :class:`structured.dense.Dense`.

    Not sequence-aligned in the strict parameter-level sense: the normalization of row i sums over
    every key, so ``M[:i+1, :i+1]`` changes when keys after i change (the unnormalized kernel
    ``exp(q_i . k_j)`` is). It is data-dependent and extendable like the sequence-aligned classes.
    """

    structure = "dense"
    sequence_aligned_definition = False
    skip = True

    def token_channels(self):
        return _qk_channels(self, act=False)

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
    ``c_i = C_i``, skip ``D`` per head. B and C are shared by all heads (one group, ``ngroups = 1`` as
    in Mamba-2's and Hydra's code) with state size ``N = d_state``, by default ``nheads * qk_dim`` (the
    paper code's quasiseparable mixer: 12 * 16 = 192 at BERT-base). Initialization:
    A ~ U[``A_init_range``] (Mamba-2: [1, 16]), dt ~ log-uniform[1e-3, 1e-1] (through dt_bias, with
    dt_raw's table at 0 for the fixed parameterization), D = 1.

    Each suffix in ``dynamics`` owns one set ``A_log<s>, dt_bias<s>, D<s>`` (one set, or one per
    direction for two independent SSMs)."""

    dynamics: tuple[str, ...] = ("",)
    A_init_range: tuple[float, float] = (1.0, 16.0)

    def __init__(self, *, d_state: int | None = None, **common):
        super().__init__(**common)
        d_state = self.nheads * self.qk_dim if d_state is None else d_state
        if isinstance(d_state, bool) or not isinstance(d_state, int) or d_state < 1:
            raise ValueError(f"d_state must be a positive int (default nheads * qk_dim), got {d_state!r}")
        self.d_state = d_state
        H = self.nheads
        for suffix in self.dynamics:
            A = torch.empty(H).uniform_(*self.A_init_range)
            dt = torch.exp(torch.empty(H).uniform_(math.log(1e-3), math.log(1e-1)))
            self.register_parameter("A_log" + suffix, nn.Parameter(torch.log(A)))
            self.register_parameter("dt_bias" + suffix, nn.Parameter(inverse_softplus(dt)))
            self.register_parameter("D" + suffix, nn.Parameter(torch.ones(H)))

    #: a per-position scalar per head taken straight from in_proj (no conv, no SiLU), table at 0
    _SCALAR = Channels(1, conv=False, act=False, init_std=0.0)

    def _state(self) -> Channels:
        """A B or C generator: d_state channels shared by all heads, through the conv + SiLU (xBC);
        fixed tables initialized like the paper's (L, 2 N) BC table."""
        return Channels(self.d_state, shared=True, init_std=_xavier_std(2 * self.d_state, self.norm_length))

    def _steps(self, dt_raw, mask, suffix=""):
        """dt_raw (B, H, L, 1) -> (dt, log_a), both (B, H, L): the steps softplus(dt_raw + dt_bias) (zero at
        padded positions) and the log-decays A dt."""
        dt_bias = getattr(self, "dt_bias" + suffix).to(dt_raw.dtype)
        A = -torch.exp(getattr(self, "A_log" + suffix).to(dt_raw.dtype))
        dt = F.softplus(dt_raw[..., 0] + dt_bias[:, None])                 # (B, H, L)
        if mask is not None:
            dt = dt * mask.to(dt.dtype)[:, None, :]
        return dt, A[:, None] * dt

    def _discretize(self, dt_raw, B, mask, suffix=""):
        """dt_raw (B, H, L, 1), B (B, 1, L, N) -> (b, log_a) with b (B, H, L, N), log_a (B, H, L)."""
        dt, log_a = self._steps(dt_raw, mask, suffix)
        # b keeps B's dtype: under CUDA bf16 autocast dt comes out of softplus in float32, and a float32 b
        # would send the whole SSD product to the kernels in float32 (FMAs instead of tensor cores: the lab
        # model's Hydra steps ran at 2.8/s against attention's 45/s on an H100, 95% of it in the float32
        # scans). The decays stay float32.
        return (B * dt[..., None]).to(B.dtype), log_a


def _one_sided_with_skip(b, c, log_a, D, backward=False):
    """One causal SSM with D skip as one matrix, a one-sided Quasiseparable (shift=False, the other
    direction's generators zero). Forward (lower-triangular):
    m_ij = c_i . b_j exp(sum_{t=j+1..i} log_a_t) (i > j); backward (the reversed SSM in the original
    frame, upper-triangular): m_ij = c_i . b_j exp(sum_{t=i..j-1} log_a_t) (i < j); m_ii = c_i . b_i + D."""
    delta = D.to(b.dtype)[:, None].expand(*log_a.shape)
    zero = (torch.zeros_like(b), torch.zeros_like(b), torch.zeros_like(log_a))
    fwd, bwd = (zero, (b, c, log_a)) if backward else ((b, c, log_a), zero)
    return _structured("quasiseparable")(*fwd, delta, b_bwd=bwd[0], c_bwd=bwd[1], log_a_bwd=bwd[2], shift=False,
                                         validate=False)


def _causal_apply(v, b, c, log_a, D, impl):
    """``(causal SSM + D I) v`` -- fast: one chunked SSD pass (:class:`structured.semiseparable.Semiseparable`)
    plus the skip; explicit: the materialized :func:`_one_sided_with_skip`."""
    if impl == "fast":
        y = _structured("semiseparable")(b, c, log_a, validate=False).matmul(v)
        return y + D.to(v.dtype)[:, None, None] * v
    return _one_sided_with_skip(b, c, log_a, D).matmul(v, method="explicit")


def _anticausal_apply(v, b, c, log_a, D, impl):
    """``(reversed SSM + D I) v``: the causal pass on the flipped sequence, flipped back."""
    if impl == "fast":
        return _causal_apply(v.flip(-2), b.flip(-2), c.flip(-2), log_a.flip(-1), D, impl).flip(-2)
    return _one_sided_with_skip(b, c, log_a, D, backward=True).matmul(v, method="explicit")


@register_mixer("semiseparable")
class SemiseparableMixer(_SSMParams):
    """Causal Mamba-2 SSD (Table 1 "Semiseparable"; the causal baseline of Table 3).

    ``m_ij = C_i . B_j dt_j exp(A sum_{t=j+1..i} dt_t)`` for i > j, ``m_ii = C_i . B_i dt_i + D``, 0 for
    i < j (dt, A, D as in :class:`_SSMParams`). B, C (N = d_state, shared by the heads, through conv +
    SiLU like Mamba-2's xBC), dt_raw (1 per head, not convolved). Sequence-aligned per the paper's Definition.

    :meth:`matrix` returns the exact applied matrix as a lower-triangular
    :class:`structured.quasiseparable.Quasiseparable` (shift=False, zero backward generators): the D
    skip puts D on the diagonal, which no scalar-decay :class:`~structured.semiseparable.Semiseparable`
    of order N can carry. The fast path is one chunked SSD pass plus ``D v``.
    """

    structure = "quasiseparable"

    def token_channels(self):
        N = self._state()
        return {"B": N, "C": N, "dt": self._SCALAR}

    def _gen(self, params, mask):
        b, log_a = self._discretize(params["dt"], params["B"], mask)
        return b, params["C"], log_a

    def matrix(self, params, length, mask=None):
        return _one_sided_with_skip(*self._gen(params, mask), self.D)

    def apply(self, v, params, mask=None, impl="fast"):
        return _causal_apply(v, *self._gen(params, mask), self.D, impl)


def _choice(mixer: Mixer, option: str, value, allowed: tuple) -> str:
    if value not in allowed:
        raise ValueError(f"{option} must be one of {allowed} for mixer {mixer.name!r}, got {value!r}")
    return value


@register_mixer("quasiseparable")
class QuasiseparableMixer(_SSMParams):
    """Hydra's quasiseparable mixer (Section 3; the paper's Table 2 "Quasiseparable" row).

    Generators B, C (N = d_state, shared by the heads, conv + SiLU), a separate dt per direction
    (``dt_f``, ``dt_b``; one ``A`` and one ``dt_bias`` per head) and a free data-dependent diagonal
    ``delta``. With ``b_j = B_j dt_f_j``, ``b'_j = B'_j dt_b_j``:

    ``m_ij = C_{i-1} . b_j exp(A sum_{t=j+1..i-1} dt_f_t)`` (i > j),
    ``m_ii = delta_i``,
    ``m_ij = C'_{i+1} . b'_j exp(A sum_{t=i+1..j-1} dt_b_t)`` (i < j).

    Options (defaults: the paper's released code, ``matrix_mixers/quasiseparable.py``):

    - ``diagonal="values"``: ``delta_i = D + fc_D(v_i)``, a learned linear map of all the post-conv
      values of position i to one scalar per head, plus the per-head ``D``; data-dependent in both
      parameterizations. ``"token"``: ``delta_i = D + r_i`` with r a raw in-projection scalar per head
      (sequence-aligned) or a learned table (fixed).
    - ``fixed_dt="bias"``: the fixed parameterization uses ``dt = softplus(dt_bias)`` at every position
      (no dt input). ``"table"``: learned per-position dt tables. Sequence-aligned dt is always projected.
    - ``bc="shared"``: one B, C for both directions (B' = B, C' = C), as the paper's Table 2 mixer.
      ``"separate"``: a B', C' of their own for the backward direction, as the Hydra layer (``hydra``).

    ``diagonal="token", fixed_dt="table"`` is the form of the committed lab results (``results/table2-lab``).
    A starts at 1 for every head (``A_init_range = (1, 1)``, as Hydra's code; Mamba-2 draws U[1, 16]).
    Sequence-aligned per the paper's Definition (the shift reads C'_{i+1} only for columns j > i).
    Fast product: two chunked SSD passes (:class:`structured.quasiseparable.Quasiseparable`).
    """

    structure = "quasiseparable"
    A_init_range = (1.0, 1.0)
    #: how each ``diagonal`` option delivers delta's data-dependent part
    _DIAGONAL = {"values": Channels(1, source="values"), "token": _SSMParams._SCALAR}

    def __init__(self, *, diagonal: str = "values", fixed_dt: str = "bias", bc: str = "shared", **common):
        super().__init__(**common)
        self.diagonal = _choice(self, "diagonal", diagonal, tuple(self._DIAGONAL))
        self.fixed_dt = _choice(self, "fixed_dt", fixed_dt, ("bias", "table"))
        self.bc = _choice(self, "bc", bc, ("shared", "separate"))

    def token_channels(self):
        N, raw = self._state(), self._SCALAR
        ch = {"B": N, "C": N}
        if self.bc == "separate":
            ch.update(B_b=N, C_b=N)
        if self.sequence_aligned or self.fixed_dt == "table":
            ch.update(dt_f=raw, dt_b=raw)
        ch["delta"] = self._DIAGONAL[self.diagonal]
        return ch

    def matrix(self, params, length, mask=None):
        B, C = params["B"], params["C"]
        B_b, C_b = params.get("B_b", B), params.get("C_b", C)
        # no dt input: dt = softplus(dt_bias), the same at every position
        zero = B.new_zeros(B.shape[0], self.nheads, length, 1)
        dt_f, log_a = self._steps(params.get("dt_f", zero), mask)
        dt_b, log_a_bwd = self._steps(params.get("dt_b", zero), mask)
        delta = params["delta"][..., 0] + self.D.to(B.dtype)[:, None]
        # The steps stay column scales of B (b = B dt): B, shared by the heads, is multiplied once for all of them
        # on the GPU path; the kernels and the CPU form b = B dt in B's dtype, as the other SSM mixers do.
        return _structured("quasiseparable")(B, C, log_a, delta, b_bwd=B_b, c_bwd=C_b, log_a_bwd=log_a_bwd,
                                             shift=True, validate=False, b_scale=dt_f, b_bwd_scale=dt_b)


@register_mixer("hydra")
class HydraMixer(QuasiseparableMixer):
    """The Hydra layer (Section 3; the paper's Table 3 "Quasiseparable" row, ``hydra/modules/hydra.py``):
    :class:`QuasiseparableMixer` with a B', C' of its own for the backward direction (``bc="separate"``)
    and the diagonal ``D + fc_D(v)``. ``bc="shared"`` makes it the Table 2 mixer again."""

    def __init__(self, *, bc: str = "separate", **kw):
        super().__init__(bc=bc, **kw)


class _TwoSSMs(_SSMParams):
    """Two independent causal Mamba-2 SSMs, one run forward and one on the reversed sequence
    (Table 3's bidirectional heuristics): separate B, C, dt, A, D per direction."""

    dynamics = ("_f", "_b")

    def token_channels(self):
        N, raw = self._state(), self._SCALAR
        return {"B_f": N, "C_f": N, "B_b": N, "C_b": N, "dt_f": raw, "dt_b": raw}

    def _gens(self, params, mask):
        b_f, la_f = self._discretize(params["dt_f"], params["B_f"], mask, "_f")
        b_b, la_b = self._discretize(params["dt_b"], params["B_b"], mask, "_b")
        return (b_f, params["C_f"], la_f), (b_b, params["C_b"], la_b)

    def matrices(self, params, length, mask=None):
        """``{"forward": lower-triangular M_f, "backward": upper-triangular M_b}`` (each with its D on
        the diagonal), as :class:`structured.quasiseparable.Quasiseparable` (shift=False)."""
        fwd, bwd = self._gens(params, mask)
        return {"forward": _one_sided_with_skip(*fwd, self.D_f),
                "backward": _one_sided_with_skip(*bwd, self.D_b, backward=True)}

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
