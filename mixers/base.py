"""The fixed matrix-mixer block and the base class every mixer derives from.

Hydra paper (Hwang, Lahoti, Dao, Gu, arXiv 2407.09941), Section 2 and Figure 1: a sequence mixer is
``Y = M . f(X)`` inside one fixed block,

    in_proj -> split [gate z | values v | per-position matrix parameters]
            -> depthwise conv (kernel d_conv, non-causal, padding d_conv // 2) + SiLU
            -> mixer (the structured matrix M, multi-head; y = M (s v) + v for the classes whose
               paper code adds the values back, ``Mixer.skip``)
            -> gated RMSNorm: RMSNorm(y) * SiLU(z)  (normalize before the gate, as the paper's code)
            -> out_proj.

A mixer (:class:`Mixer`) declares only what differs between classes: its structured class
(``structure``), the per-position channels its matrix needs (:meth:`Mixer.token_channels`), how to
build the matrix from them (:meth:`Mixer.matrix`), and which parameterizations it supports. The
*parameterization is the block's job*: sequence-aligned parameters are projected from the tokens by
``in_proj`` (and pass through the conv like the paper's ``xBC``); fixed parameters are rows of a
learned table of ``max_seq_len`` rows (not data-dependent, hence not extendable). One code path serves
every class.

Padding. ``block(u, mask)`` with ``mask`` (B, L) True on real tokens zeroes the padded positions of
the in_proj output (so the non-causal conv sees zeros there, exactly as at a sequence boundary) and
again after the conv (so the padded values and parameters are zero). Each mixer receives the mask and
makes padded positions inert in its own terms (decays set to 1 so a state passes through unchanged,
keys excluded from the softmax). With right padding, the outputs at the real positions then equal
those of the unpadded sequence for every mixer except ``dft`` (whose matrix depends on the padded
length; see :class:`mixers.zoo.DFTMixer`).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from . import registry
from .checks import check_block_input

IMPLS = ("fast", "explicit")
_COMMON = ("nheads", "headdim", "qk_dim", "max_seq_len", "sequence_aligned")


@dataclass(frozen=True)
class Channels:
    """Declaration of one per-position parameter group of a mixer.

    size:   channels per head (or in total when ``shared``)
    conv:   sequence-aligned only: pass through the depthwise conv like the values (the paper convolves
            q/k and B/C, not dt)
    act:    sequence-aligned only: apply SiLU after the conv (the paper does for low-rank and SSM
            generators, not for the Vandermonde/Cauchy/attention q, k)
    shared: one group for all heads, delivered as ``(B, 1, L, size)`` instead of ``(B, H, L, size)``
    init_std: fixed only: the learned table starts as N(0, init_std^2) (0: all zeros)
    source: ``"tokens"`` (default): the parameterization decides, a token projection (sequence-aligned)
            or a learned table (fixed); ``"values"``: a learned linear map (no bias) of all the
            post-conv values v of the position, in *both* parameterizations (Hydra's ``fc_D``
            diagonal, which the paper's fixed variant keeps data-dependent); conv and act do not apply
    """

    size: int
    conv: bool = True
    act: bool = True
    shared: bool = False
    init_std: float = 1.0
    source: str = "tokens"


SOURCES = ("tokens", "values")


class Mixer(nn.Module):
    """Base class of a matrix mixer (one structured class, multi-head).

    Subclasses set the class attributes and implement :meth:`token_channels` and :meth:`matrix`; they
    own their learned per-head scalars (e.g. ``A_log``, ``dt_bias``, ``D``) as ordinary parameters.
    Register with ``@mixers.register_mixer("name")``.

    Class attributes
    ----------------
    structure:          name of the structured class :meth:`matrix` returns (``structured.get(name)``).
    parameterizations:  supported subset of ``("fixed", "sequence_aligned")``.
    sequence_aligned_definition: True when ``M[:i+1, :i+1]`` is built only from the per-position
                        parameters of positions ``0..i`` (the paper's Definition of sequence-aligned
                        matrices); tested at the parameter level.
    skip:               True: the mixing step adds the values back, ``y = M (s v) + v`` (the paper's
                        ``+ residual``); ``value_scale`` is s.
    has_matrix:         False for mixers that are not one matrix (they override :meth:`apply` and
                        :meth:`matrices`; :meth:`matrix` raises).

    Constructor arguments (passed by the block; subclasses add keyword-only options of their own):
    nheads, headdim, qk_dim, max_seq_len, sequence_aligned.
    """

    name: ClassVar[str] = ""
    structure: ClassVar[str] = ""
    parameterizations: ClassVar[tuple[str, ...]] = ("fixed", "sequence_aligned")
    sequence_aligned_definition: ClassVar[bool] = True
    has_matrix: ClassVar[bool] = True

    #: Length the paper's 1/sqrt(L ...) output scalings refer to when ``max_seq_len`` is not given
    #: (the paper's pretraining length). A *constant* reference length keeps a sequence's output
    #: independent of the padding of its batch and of extension to longer inputs.
    DEFAULT_NORM_LENGTH: ClassVar[int] = 128

    def __init__(self, *, nheads: int, headdim: int, qk_dim: int, max_seq_len: int | None,
                 sequence_aligned: bool, **unknown):
        if unknown:
            allowed = sorted({p.name for klass in type(self).__mro__ if "__init__" in vars(klass)
                              for p in inspect.signature(vars(klass)["__init__"]).parameters.values()
                              if p.kind == p.KEYWORD_ONLY and p.name not in _COMMON})
            raise ValueError(f"unknown keyword argument(s) {sorted(unknown)} for mixer {self.name!r}; "
                             f"its options are: {allowed if allowed else 'none'}")
        super().__init__()
        self.nheads, self.headdim, self.qk_dim = nheads, headdim, qk_dim
        self.max_seq_len, self.sequence_aligned = max_seq_len, sequence_aligned
        self.norm_length = max_seq_len if max_seq_len is not None else self.DEFAULT_NORM_LENGTH
        # A 0-d buffer that follows .to(dtype/device): parameter-free matrices (dft) read it.
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    # ------------------------------------------------------------------------------ declarations
    def token_channels(self) -> dict[str, int | Channels]:
        """Per-position parameter groups: ``{name: channels per head}`` (or a :class:`Channels`)."""
        raise NotImplementedError(f"{type(self).__name__} must implement token_channels()")

    #: The paper's output scaling ``s`` for classes whose matrix has no amplitude parameter to fold it
    #: into (e.g. Vandermonde, DFT): the matrix acts on ``s v``.
    value_scale: float = 1.0

    #: Identity skip: the mixing step adds the (unscaled) values, ``y = M (s v) + v``. Every non-SSM mixer
    #: of the Hydra paper's code ends with ``+ residual`` on its input values; the SSM mixers carry the
    #: skip in their diagonal (Mamba-2's ``D``, Hydra's ``delta``) instead.
    skip: ClassVar[bool] = False

    # ------------------------------------------------------------------------------ the matrix
    def matrix(self, params: dict[str, torch.Tensor], length: int, mask: torch.Tensor | None = None):
        """The structured matrix of every (batch, head) from per-position parameters.

        params: ``{name: (B, H, L, size)}`` (``(B, 1, L, size)`` for shared groups); zero at padded
        positions. mask: ``(B, L)`` bool, True on real tokens, or None. Returns a StructuredMatrix with
        batch shape ``(B, H)`` (or broadcastable to it).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement matrix()")

    def matrices(self, params, length, mask=None) -> dict:
        """All structured matrices the mixer applies, by name (``{"matrix": M}`` for one-matrix mixers)."""
        return {"matrix": self.matrix(params, length, mask)}

    def apply(self, v: torch.Tensor, params: dict[str, torch.Tensor], mask: torch.Tensor | None = None,
              impl: str = "fast") -> torch.Tensor:
        """The matrix product of the mixing step: v ``(B, H, L, P)`` (already multiplied by
        ``value_scale``) -> ``(B, H, L, P)``. Default ``matrix(...).matmul(v)`` with the class's fast
        algorithm (``impl="fast"``) or its materialization (``"explicit"``). The identity skip
        (:attr:`skip`) is added by :meth:`mix`, not here."""
        return self.matrix(params, v.shape[-2], mask).matmul(v, method=impl)

    def mix(self, v: torch.Tensor, params: dict[str, torch.Tensor], mask: torch.Tensor | None = None,
            impl: str = "fast") -> torch.Tensor:
        """The whole mixing step ``y = apply(value_scale * v) (+ v if skip)``; v ``(B, H, L, P)``."""
        y = self.apply(v * self.value_scale if self.value_scale != 1.0 else v, params, mask, impl)
        return y + v if self.skip else y


class UnknownMixerError(ValueError, KeyError):
    """A mixer name that no mixer is registered under, given to a block: a bad argument (ValueError), and a
    KeyError as :func:`mixers.get` raises for the same name, so that code catching either keeps working."""

    def __str__(self) -> str:  # the message as written, not KeyError's quoted repr of it
        return str(self.args[0]) if self.args else ""


def _check_int(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


class GatedRMSNorm(nn.Module):
    """``RMSNorm(y) * SiLU(z)`` over the last dim (normalize before the gate, as Mamba-2/Hydra's
    ``RMSNormGated(norm_before_gate=True)``). y, z: ``(..., d)``."""

    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight
        return y * F.silu(z)


class MatrixMixerBlock(nn.Module):
    """The fixed matrix-mixer block (Hydra paper, Section 2, Figure 1).

    Parameters
    ----------
    d_model:          model width; the block maps ``(B, L, d_model)`` to ``(B, L, d_model)``.
    mixer:            a registered mixer name (see :func:`mixers.names`) or a :class:`Mixer` subclass.
    sequence_aligned: True: per-position matrix parameters are projected from the tokens (data-dependent,
                      any length); False: *fixed*, rows of a learned ``(max_seq_len, channels)`` table
                      (inputs longer than ``max_seq_len`` raise ValueError: not extendable).
    max_seq_len:      required for the fixed parameterization; also the reference length of the
                      paper's 1/sqrt(L) output scalings (default 128 when None).
    expand:           d_inner = expand * d_model.
    headdim:          channels per head P; nheads H = d_inner / headdim.
    qk_dim:           per-head width of q/k (the SSM mixers' state, shared by the heads, defaults to
                      ``d_state = nheads * qk_dim`` as the paper's code).
    d_conv:           kernel of the depthwise conv (odd; non-causal, padding d_conv // 2).
    impl:             "fast" (the structured class's fast algorithm) or "explicit" (materialized matrix).
    mixer_kwargs:     options of the mixer (e.g. ``d_state`` for the SSM mixers).

    Shapes: u ``(B, L, d_model)``, mask ``(B, L)`` bool (True = real token) -> ``(B, L, d_model)``.
    Cost: two projections O(B L d_model d_inner), the conv O(B L d_inner d_conv), plus the mixer's
    product (see the structured class).
    """

    def __init__(self, d_model: int, mixer, sequence_aligned: bool, max_seq_len: int | None = None,
                 expand: int = 2, headdim: int = 64, qk_dim: int = 16, d_conv: int = 7, impl: str = "fast",
                 **mixer_kwargs):
        super().__init__()
        _check_int("d_model", d_model)
        _check_int("expand", expand)
        _check_int("headdim", headdim)
        _check_int("qk_dim", qk_dim)
        _check_int("d_conv", d_conv)
        if d_conv % 2 == 0:
            raise ValueError(f"d_conv must be odd (a non-causal conv with padding d_conv // 2 keeps the length), "
                             f"got {d_conv}")
        if not isinstance(sequence_aligned, bool):
            raise ValueError(f"sequence_aligned must be True or False, got {sequence_aligned!r}")
        if max_seq_len is not None:
            _check_int("max_seq_len", max_seq_len)
        if isinstance(mixer, str):
            if mixer not in registry.names():
                raise UnknownMixerError(f"mixer: unknown mixer {mixer!r}; registered: "
                                        f"{', '.join(registry.names())} (or pass a mixers.base.Mixer subclass)")
            mixer_cls = registry.get(mixer)
        elif isinstance(mixer, type) and issubclass(mixer, Mixer):
            mixer_cls = mixer
        else:
            raise ValueError(f"mixer must be a registered mixer name ({', '.join(registry.names())}) or a "
                             f"mixers.base.Mixer subclass, got {mixer!r}")
        d_inner = expand * d_model
        if d_inner % headdim != 0:
            raise ValueError(f"headdim={headdim} must divide d_inner = expand * d_model = {d_inner}")
        parameterization = "sequence_aligned" if sequence_aligned else "fixed"
        if parameterization not in mixer_cls.parameterizations:
            raise ValueError(f"mixer {mixer_cls.name or mixer_cls.__name__!r} does not support the {parameterization} "
                             f"parameterization (sequence_aligned={sequence_aligned}); it supports: "
                             f"{', '.join(mixer_cls.parameterizations)}")
        if not sequence_aligned and max_seq_len is None:
            raise ValueError(f"max_seq_len is required for the fixed parameterization (sequence_aligned=False) of "
                             f"mixer {mixer_cls.name!r}: it is the number of rows of the learned table")

        self.d_model, self.d_inner, self.headdim = d_model, d_inner, headdim
        self.nheads = d_inner // headdim
        self.max_seq_len, self.sequence_aligned, self.d_conv = max_seq_len, sequence_aligned, d_conv
        self.impl = impl
        self.mixer = mixer_cls(nheads=self.nheads, headdim=headdim, qk_dim=qk_dim, max_seq_len=max_seq_len,
                               sequence_aligned=sequence_aligned, **mixer_kwargs)

        specs = {}
        for name, spec in self.mixer.token_channels().items():
            spec = spec if isinstance(spec, Channels) else Channels(spec)
            _check_int(f"token_channels()[{name!r}].size", spec.size)
            if not (isinstance(spec.init_std, (int, float)) and spec.init_std >= 0):
                raise ValueError(f"token_channels()[{name!r}].init_std must be a float >= 0, got {spec.init_std!r}")
            if spec.source not in SOURCES:
                raise ValueError(f"token_channels()[{name!r}].source must be one of {SOURCES}, got {spec.source!r}")
            specs[name] = spec
        self._specs = specs
        width = {n: s.size * (1 if s.shared else self.nheads) for n, s in specs.items()}
        self._width = width
        from_tokens = [n for n, s in specs.items() if s.source == "tokens"]
        self._value_groups = [n for n, s in specs.items() if s.source == "values"]
        if sequence_aligned:
            self._conv_groups = [n for n in from_tokens if specs[n].conv]
            self._raw_groups = [n for n in from_tokens if not specs[n].conv]
        else:
            self._conv_groups, self._raw_groups = [], []
        n_conv = sum(width[n] for n in self._conv_groups)
        n_raw = sum(width[n] for n in self._raw_groups)
        self.in_proj = nn.Linear(d_model, 2 * d_inner + n_conv + n_raw, bias=False)
        conv_dim = d_inner + n_conv
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, kernel_size=d_conv, groups=conv_dim, padding=d_conv // 2)
        self.tables = nn.ParameterDict()
        if self._value_groups:
            # registered only when used, so the state dicts of the other mixers keep their keys
            self.value_proj = nn.Linear(d_inner, sum(width[n] for n in self._value_groups), bias=False)
        if not sequence_aligned:
            for n in from_tokens:
                s = specs[n]
                t = torch.empty(1 if s.shared else self.nheads, max_seq_len, s.size)
                self.tables[n] = nn.Parameter(t.normal_(0.0, s.init_std) if s.init_std > 0 else t.zero_())
        self.norm = GatedRMSNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    # ------------------------------------------------------------------------------ properties
    @property
    def impl(self) -> str:
        return self._impl

    @impl.setter
    def impl(self, value: str) -> None:
        if value not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {value!r}")
        self._impl = value

    @property
    def parameterization(self) -> str:
        return "sequence_aligned" if self.sequence_aligned else "fixed"

    def extra_repr(self) -> str:
        return (f"mixer={self.mixer.name!r}, {self.parameterization}, d_model={self.d_model}, "
                f"nheads={self.nheads}, headdim={self.headdim}, max_seq_len={self.max_seq_len}, impl={self.impl!r}")

    # ------------------------------------------------------------------------------ pieces
    def _check_inputs(self, u, mask):
        if not isinstance(u, torch.Tensor) or u.dim() != 3 or u.shape[-1] != self.d_model:
            raise ValueError(f"u must be a tensor of shape (B, L, d_model={self.d_model}), got "
                             f"{tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__}")
        if u.shape[1] < 1 or u.shape[0] < 1:
            raise ValueError(f"u must have B >= 1 and L >= 1, got shape {tuple(u.shape)}")
        check_block_input(u, dtype=self.in_proj.weight.dtype, device=self.in_proj.weight.device,
                          training=self.training)
        L = u.shape[1]
        if not self.sequence_aligned and L > self.max_seq_len:
            raise ValueError(f"input length L={L} exceeds max_seq_len={self.max_seq_len}: the fixed parameterization "
                             f"of mixer {self.mixer.name!r} is a learned table of max_seq_len rows and is not "
                             f"extendable (use sequence_aligned=True, or a larger max_seq_len)")
        return normalize_mask(mask, u.shape[:2])

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        """The depthwise conv along the sequence of ``x`` ``(B, L, channels)``, returned in that layout.

        Eager: ``nn.Conv1d`` on the transposed view. Under ``torch.compile``: the same cross-correlation as a sum
        of ``d_conv`` shifted, scaled copies in the ``(B, L, channels)`` layout, which inductor fuses (forward and
        backward) with the surrounding SiLU and splits into a few elementwise kernels; the conv kernels and
        their layout copies took an eighth of a compiled Hydra step (docs/performance.md). Accumulates in
        float32 at least, rounds to ``x``'s dtype."""
        if not torch.compiler.is_compiling():
            # Back to (B, L, channels) in memory, not a transposed view: every per-head slice taken from it
            # then has unit stride in its last dim, which SDPA's fused kernels require (a strided q/k/v falls
            # back to the math backend and its L x L tensor) and which the scans' loads need to coalesce.
            return self.conv1d(x.transpose(1, 2)).transpose(1, 2).contiguous()
        L, K = x.shape[1], self.conv1d.kernel_size[0]
        acc = torch.promote_types(x.dtype, torch.float32)
        w = self.conv1d.weight[:, 0, :].to(acc)                                    # (channels, K)
        xp = F.pad(x, (0, 0, K // 2, K // 2))
        y = self.conv1d.bias.to(acc) + sum(xp[:, k:k + L, :] * w[:, k] for k in range(K))
        return y.to(x.dtype)

    def _split_heads(self, name, x):
        """(B, L, width) -> (B, H or 1, L, size)."""
        s = self._specs[name]
        B, L, _ = x.shape
        return x.reshape(B, L, -1, s.size).transpose(1, 2)

    def mixer_inputs(self, u: torch.Tensor, mask: torch.Tensor | None = None):
        """Everything before the mixing step: ``(z, v, params)`` with z ``(B, L, d_inner)``, v
        ``(B, H, L, P)`` and params ``{name: (B, H or 1, L, size)}``; padded positions are zero in v and
        params. The block output is ``out_proj(norm(y, z))`` with ``y = mixer.mix(v, params, mask)``
        ``= M (s v) + [skip] v``, M = ``matrix(u)``, s = ``mixer.value_scale``."""
        return self._prepare(u, mask)[:3]

    def _prepare(self, u, mask):
        mask = self._check_inputs(u, mask)
        B, L, _ = u.shape
        h = self.in_proj(u)
        # Everything the mixer gets (v, the token channels, the fixed tables, the mask factor) is in h's
        # dtype: under bf16 autocast that is bfloat16. A float32 mask factor or table would promote the
        # product to float32, and the SSM scans would leave the tensor cores (the lab model's padded
        # fine-tuning and fixed Hydra steps ran 10x slower that way on an H100, results/table2-lab/README.md).
        m = None if mask is None else mask.to(h.dtype)[..., None]
        if m is not None:
            h = h * m
        n_conv = sum(self._width[n] for n in self._conv_groups)
        z, xc, raw = torch.split(h, [self.d_inner, self.d_inner + n_conv, h.shape[-1] - 2 * self.d_inner - n_conv],
                                 dim=-1)
        xc = self._conv(xc)
        if m is not None:
            xc = xc * m
            # raw (unconvolved) groups were zeroed with h
        pieces = torch.split(xc, [self.d_inner] + [self._width[n] for n in self._conv_groups], dim=-1)
        v = F.silu(pieces[0])
        params = {}
        for name, x in zip(self._conv_groups, pieces[1:]):
            params[name] = F.silu(x) if self._specs[name].act else x
        if self._raw_groups:
            for name, x in zip(self._raw_groups, torch.split(raw, [self._width[n] for n in self._raw_groups], -1)):
                params[name] = F.silu(x) if self._specs[name].act else x
        if self._value_groups:
            # v is zero at padded positions and the map has no bias, so these channels are zero there too
            vp = self.value_proj(v)
            for name, x in zip(self._value_groups, torch.split(vp, [self._width[n] for n in self._value_groups], -1)):
                params[name] = x
        params = {n: self._split_heads(n, x) for n, x in params.items()}
        if not self.sequence_aligned:
            for name, t in self.tables.items():
                p = t[:, :L].to(h.dtype).unsqueeze(0).expand(B, -1, -1, -1)
                params[name] = p if m is None else p * m[:, None]
        v = v.reshape(B, L, self.nheads, self.headdim).transpose(1, 2)
        return z, v, params, mask

    # ------------------------------------------------------------------------------ public
    def forward(self, u: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """u ``(B, L, d_model)``, mask ``(B, L)`` bool or None -> ``(B, L, d_model)``."""
        z, v, params, mask = self._prepare(u, mask)
        y = self.mixer.mix(v, params, mask, impl=self.impl)
        B, H, L, P = y.shape
        y = y.transpose(1, 2).reshape(B, L, H * P)
        return self.out_proj(self.norm(y, z))

    def matrix(self, u: torch.Tensor, mask: torch.Tensor | None = None):
        """The StructuredMatrix the block applies to its values for input ``u`` (batch ``(B, heads)``,
        or broadcastable to it for parameter-free classes). With ``v`` from :meth:`mixer_inputs`, the
        mixing step is ``matrix(u).to_dense() @ (s v) (+ v)`` (s = ``mixer.value_scale``, ``+ v`` when
        ``mixer.skip``). Mixers that are not one matrix (``bidir_mult``,
        ``bidir_concat``) raise ValueError; use :meth:`matrices`."""
        _, v, params, mask = self._prepare(u, mask)
        return self.mixer.matrix(params, v.shape[-2], mask)

    def matrices(self, u: torch.Tensor, mask: torch.Tensor | None = None) -> dict:
        """All structured matrices the mixer applies for input ``u``, by name."""
        _, v, params, mask = self._prepare(u, mask)
        return self.mixer.matrices(params, v.shape[-2], mask)


def normalize_mask(mask: torch.Tensor | None, shape) -> torch.Tensor | None:
    """Validate a padding mask for inputs of batch shape ``shape = (B, L)``: bool, True on real tokens,
    right-padded, at least one real token per row (ValueError naming the rows otherwise). Returns None for
    no mask or an all-real one, so callers take their unmasked paths. Reads the mask back to the host."""
    shape = tuple(shape)
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or mask.shape != shape:
        raise ValueError(f"mask must be a bool tensor of shape (B, L)={shape}, got "
                         f"{tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must have dtype torch.bool (True on real tokens), got {mask.dtype}")
    if not bool(mask.any(-1).all()):
        empty = (~mask.any(-1)).nonzero().flatten().tolist()
        raise ValueError(f"mask must mark at least one real token per sequence; rows {empty} are all padding")
    # Right padding only: position-dependent parameters (fixed tables, Toeplitz lags, the SSM shift) index
    # positions from the start, so a left-padded sequence would not equal its unpadded self.
    if mask.shape[-1] > 1 and bool((mask[:, 1:] & ~mask[:, :-1]).any()):
        bad = (mask[:, 1:] & ~mask[:, :-1]).any(-1).nonzero().flatten().tolist()
        raise ValueError(f"mask must be right-padded (each row: real tokens first, then padding); rows {bad} "
                         f"have a real token after padding")
    # An all-real mask is no mask: keeps the unmasked fast paths (e.g. SDPA without attn_mask).
    return None if bool(mask.all()) else mask


def inverse_softplus(x: torch.Tensor) -> torch.Tensor:
    """softplus^{-1}(x) = log(expm1(x)) for x > 0."""
    return x + torch.log(-torch.expm1(-x))


__all__ = ["Mixer", "Channels", "SOURCES", "MatrixMixerBlock", "GatedRMSNorm", "IMPLS", "inverse_softplus", "normalize_mask"]
