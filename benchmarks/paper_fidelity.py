"""Paper fidelity: each Table 2 row (and Table 3's Hydra row) built in mixerzoo and in the paper's released code
(goombalab/hydra: ``hydra/modules/matrix_mixer.py``, ``matrix_mixers/*.py``, ``hydra.py``) with the same weights,
run on the same input in float64, compared.

Run (CPU by default)::

    PYTHONPATH=/path/to/released-code python -m benchmarks.paper_fidelity --out results/fidelity \\
        --paper-commit <goombalab/hydra commit>

where ``/path/to/released-code`` holds the ``hydra`` package of goombalab/hydra and ``mamba_ssm`` (its Triton
ops and ``mamba_ssm/modules/ssd_minimal.py``) plus ``einops``; ``results/fidelity/README.md`` gives the exact
setup. When the released code is not importable the module says so in one line and exits with status 2.

What it does, per row of :data:`ROWS`:

1. builds the paper's block (``MatrixMixer(type, is_data_dependent, ...)`` or ``Hydra(...)``) and ours
   (``mixers.MatrixMixerBlock``) at a small configuration (:data:`CONFIG`), both in float64;
2. perturbs the paper's per-head scalars away from their symmetric initial values (so a head mix-up shows)
   and copies every paper weight into ours through the row's declarative mapping (:class:`Row.weights`:
   our parameter name -> the paper's name and a shape transform); every parameter of our block must be
   written, or the row fails;
3. runs both blocks on the same input and reports the max abs / rel error of the block outputs and, for the
   mixers whose mixing step is linear in the values, of the effective mixing matrix (``s M`` of ours against
   the paper's mixer probed with unit values, its ``+ residual`` removed).

The released code runs its SSD scans and gated RMSNorm through mamba_ssm's Triton kernels, which do not run on a
CPU (not even under ``TRITON_INTERPRET=1``: the launcher queries the CUDA device). On a CPU the checker therefore
routes them through mamba_ssm's own pure-torch references: ``mamba_chunk_scan_combined`` through
``mamba_ssm.modules.ssd_minimal.ssd_minimal_discrete`` (one chunk of the whole length) and ``RMSNorm`` through
``layernorm_gated.rms_norm_ref(upcast=False)``; the output records this. ``--device cuda`` keeps the kernels
(their float32 accumulation then bounds the errors).

Rows the released code cannot produce are reported as "cannot build in the released code: <reason>", with the
exception it raised where it raises one.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import math
import platform
import subprocess
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

#: small configuration of both blocks (the paper's BERT-base has d_model 768, headdim 128, qk_dim 16, L 128)
CONFIG = dict(d_model=32, expand=2, headdim=16, qk_dim=4, max_seq_len=16, d_conv=7)
BATCH = 2
#: the blocks' parameters every row shares, under the same names in both codebases
COMMON = ("in_proj.weight", "conv1d.weight", "conv1d.bias", "norm.weight", "out_proj.weight")


def _heads_first(t: torch.Tensor) -> torch.Tensor:
    """The paper's (L, H, d) tables -> ours (H, L, d)."""
    return t.permute(1, 0, 2)


def _bc_half(which: int) -> Callable:
    """The paper's fixed BC table (L, 2 N) -> our shared B or C table (1, L, N)."""
    return lambda t: t.chunk(2, dim=-1)[which][None]


def _toeplitz_lags(side: str) -> Callable:
    """The paper's fixed kernel c (H, 2L-1) -> our lag tables f or g (H, L, 1).

    Its length-(2L-1) circular FFT applies lag d = i - j with weight c[d + L] for d <= L-2 and c[0] for the
    corner lag d = L-1 (research notes §1.2); ours reads f_d = w_d (d >= 0) and g_e = w_{-e-1}."""
    def f(c):
        H, K = c.shape
        L = (K + 1) // 2
        d = torch.arange(L) if side == "f" else -torch.arange(L) - 1          # the lag each row holds
        idx = torch.where(d == L - 1, torch.zeros_like(d), d + L).clamp(max=K - 1)
        return c[:, idx][..., None]
    return f


def _offset_per_head(nheads: int) -> Callable:
    """The paper's one unconstrained Cauchy offset (a scalar) -> our per-head softplus parameter."""
    from mixers.base import inverse_softplus
    return lambda b: inverse_softplus(b.reshape(1).expand(nheads).clone())


@dataclass(frozen=True)
class Row:
    """One table row: how to build it in both codebases and how the weights map.

    label:      the row as the paper's table names it
    ours:       (mixer name, sequence_aligned, options)
    paper:      ``("matrix_mixer", type, is_data_dependent)`` or ``("hydra",)``; None with ``cannot_build``
    weights:    {our parameter name: (paper parameter name, transform or None)} beyond :data:`COMMON`
    probe:      compare the effective mixing matrices too (mixing step linear in the values)
    cannot_build: the reason the released code cannot produce this row (nothing is run)
    note:       a known, documented cause of a nonzero difference
    """

    label: str
    ours: tuple
    paper: tuple | None
    weights: dict = field(default_factory=dict)
    probe: bool = True
    cannot_build: str | None = None
    note: str = ""


_QS_SCALARS = {"mixer.D": ("D", None), "mixer.dt_bias": ("dt_bias", None), "mixer.A_log": ("A_log", None),
               "value_proj.weight": ("fc_D.weight", None)}


def _mm(weights: dict) -> dict:
    """Paper names of a MatrixMixer's mixer sit under ``matrix_mixer.``."""
    return {ours: ("matrix_mixer." + name, fn) for ours, (name, fn) in weights.items()}


H = CONFIG["expand"] * CONFIG["d_model"] // CONFIG["headdim"]

ROWS: list[Row] = [
    Row("Dense", ("dense", False, {}), ("matrix_mixer", "dense", False), _mm({"tables.m": ("M", None)})),
    Row("Toeplitz", ("toeplitz", False, {}), ("matrix_mixer", "toeplitz", False),
        _mm({"tables.f": ("conv_params", _toeplitz_lags("f")), "tables.g": ("conv_params", _toeplitz_lags("g"))}),
        note="the released code takes its FFT in float32"),
    Row("Toeplitz SA", ("toeplitz", True, {}), ("matrix_mixer", "toeplitz", True),
        note="differs by design: the released code reads lag d >= 0 from position d+1 of its forward projection "
             "and wraps the corner lag L-1 to the reverse one (research notes §1.2); mixerzoo assigns lags "
             "directly. Also float32 FFT"),
    Row("DFT", ("dft", False, {}), ("matrix_mixer", "vandermonde", False),
        note="the released code builds its DFT matrix in float32"),
    Row("Vandermonde", ("vandermonde", False, {}), None,
        cannot_build="its fixed Vandermonde is the parameter-free DFT mixer (is_dft defaults to True and the "
                     "learned branch is unreachable), the same model as the DFT row; mixerzoo's is a learned table"),
    Row("Vandermonde SA", ("vandermonde", True, {}), ("matrix_mixer", "vandermonde", True)),
    Row("Cauchy", ("cauchy", False, {}), ("matrix_mixer", "cauchy", False),
        _mm({"tables.q": ("q_matrix", _heads_first), "tables.k": ("k_matrix", _heads_first)}),
        note="the released code adds tol = 1e-8 to every denominator"),
    Row("Cauchy SA", ("cauchy", True, {}), ("matrix_mixer", "cauchy", True),
        _mm({"mixer.offset_raw": ("bias", _offset_per_head(H))}),
        note="the released code adds tol = 1e-8 to every denominator"),
    Row("Low-rank", ("low_rank", False, {}), ("matrix_mixer", "low_rank", False),
        _mm({"tables.q": ("q_matrix", _heads_first), "tables.k": ("k_matrix", _heads_first)})),
    Row("Low-rank SA", ("low_rank", True, {}), ("matrix_mixer", "low_rank", True)),
    Row("Attention", ("attention", False, {}), ("matrix_mixer", "attention", False),
        _mm({"tables.q": ("q_matrix", _heads_first), "tables.k": ("k_matrix", _heads_first)})),
    Row("Attention SA", ("attention", True, {}), ("matrix_mixer", "attention", True)),
    Row("Quasiseparable", ("quasiseparable", False, {}), ("matrix_mixer", "quasiseparable", False),
        _mm({**_QS_SCALARS, "tables.B": ("BC", _bc_half(0)), "tables.C": ("BC", _bc_half(1))}), probe=False),
    Row("Quasiseparable SA", ("quasiseparable", True, {}), ("matrix_mixer", "quasiseparable", True),
        _mm(_QS_SCALARS), probe=False),
    Row("Table 3: Hydra", ("hydra", True, {}), ("hydra",), dict(_QS_SCALARS), probe=False),
]


# ----------------------------------------------------------------------------------------- the paper's code
class PaperCodeMissing(RuntimeError):
    pass


def import_paper():
    """The released modules (MatrixMixer, Hydra); PaperCodeMissing naming what failed."""
    try:
        from hydra.modules.hydra import Hydra
        from hydra.modules.matrix_mixer import MatrixMixer
    except Exception as e:  # ImportError, or a package named hydra that is not the paper's (hydra-core)
        raise PaperCodeMissing(f"{type(e).__name__}: {e}") from None
    return MatrixMixer, Hydra


def use_torch_references() -> str:
    """Route the released code's Triton SSD scan and gated RMSNorm through mamba_ssm's pure-torch references
    (dtype-preserving, so float64 stays float64). Returns a description for the report."""
    import hydra.modules.hydra as hydra_layer
    import hydra.modules.matrix_mixers.quasiseparable as qs
    from mamba_ssm.modules.ssd_minimal import ssd_minimal_discrete
    from mamba_ssm.ops.triton import layernorm_gated

    def scan(x, dt, A, B, C, chunk_size, D=None, z=None, seq_idx=None, initial_states=None, **kw):
        if D is not None or z is not None or seq_idx is not None or initial_states is not None or kw:
            raise NotImplementedError("the reference scan covers D=z=seq_idx=initial_states=None only")
        h = x.shape[2]
        B, C = (t.repeat_interleave(h // t.shape[2], dim=2) for t in (B, C))
        y, _ = ssd_minimal_discrete(x * dt[..., None], A.to(dt.dtype) * dt, B, C, block_len=x.shape[1])
        return y

    def norm(self, x, z=None):
        return layernorm_gated.rms_norm_ref(x, self.weight, self.bias, z=z, eps=self.eps, group_size=self.group_size,
                                            norm_before_gate=self.norm_before_gate, upcast=False)

    hydra_layer.mamba_chunk_scan_combined = scan
    qs.mamba_chunk_scan_combined = scan
    layernorm_gated.RMSNorm.forward = norm
    return ("SSD scan: mamba_ssm.modules.ssd_minimal.ssd_minimal_discrete (one chunk); gated RMSNorm: "
            "mamba_ssm.ops.triton.layernorm_gated.rms_norm_ref(upcast=False)")


def build_paper(row: Row, classes):
    MatrixMixer, Hydra = classes
    c = CONFIG
    if row.paper[0] == "hydra":
        return Hydra(c["d_model"], d_state=H * c["qk_dim"], d_conv=c["d_conv"], expand=c["expand"],
                     headdim=c["headdim"])
    _, kind, dd = row.paper
    return MatrixMixer(kind, dd, c["d_model"], c["qk_dim"], max_seq_len=c["max_seq_len"], d_conv=c["d_conv"],
                       expand=c["expand"], headdim=c["headdim"])


def build_ours(row: Row):
    import mixers
    name, sa, options = row.ours
    c = CONFIG
    return mixers.MatrixMixerBlock(c["d_model"], name, sa, max_seq_len=c["max_seq_len"], expand=c["expand"],
                                   headdim=c["headdim"], qk_dim=c["qk_dim"], d_conv=c["d_conv"], **options)


# ----------------------------------------------------------------------------------------- the comparison
def perturb_scalars(paper: torch.nn.Module, seed: int = 0) -> None:
    """Move the paper's per-head scalars (D, dt_bias, the Cauchy offset) off their symmetric initial values.
    A_log stays at 0 (A = -1): the released code casts A to float32, exact only there."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in paper.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf in ("D", "dt_bias", "bias") and p.dim() <= 1 and not name.startswith("conv1d"):
                p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def copy_weights(row: Row, paper: torch.nn.Module, ours: torch.nn.Module) -> None:
    """Write every parameter of ``ours`` from ``paper`` through :data:`COMMON` and ``row.weights``. ValueError
    when a parameter of ours has no source or a shape differs."""
    src = dict(paper.named_parameters())
    mapping = {n: (n, None) for n in COMMON} | dict(row.weights)
    dst = dict(ours.named_parameters())
    unmapped = sorted(set(dst) - set(mapping))
    if unmapped:
        raise ValueError(f"row {row.label!r}: parameters of ours without a source in the mapping: {unmapped}")
    with torch.no_grad():
        for name, (pname, fn) in mapping.items():
            if name not in dst:
                raise ValueError(f"row {row.label!r}: the mapping names {name!r}, which our block does not have")
            if pname not in src:
                raise ValueError(f"row {row.label!r}: the mapping reads {pname!r}, which the paper's block does "
                                 f"not have (it has {sorted(src)})")
            value = src[pname] if fn is None else fn(src[pname])
            if tuple(value.shape) != tuple(dst[name].shape):
                raise ValueError(f"row {row.label!r}: {pname} -> {name}: shape {tuple(value.shape)} != "
                                 f"{tuple(dst[name].shape)}")
            dst[name].copy_(value)


def _errors(a: torch.Tensor, b: torch.Tensor) -> dict:
    diff = (a - b).abs().max().item()
    return {"max_abs": diff, "max_rel": diff / max(b.abs().max().item(), 1e-300)}


def paper_mixing_matrix(paper, u: torch.Tensor) -> torch.Tensor:
    """The paper's effective mixing matrix (its mixer's output minus the ``+ residual``) for the first batch
    element: its mixer is called again with unit values (one position, channel 0 of every head, at a time)
    and the per-position inputs it received for ``u``. Returns (H, L, L)."""
    mm = paper.matrix_mixer
    seen = {}
    handle = mm.register_forward_pre_hook(lambda mod, args, kwargs: seen.update(args=args, kwargs=kwargs),
                                          with_kwargs=True)
    try:
        paper(u[:1])
    finally:
        handle.remove()
    v = seen["args"][0]
    L, width = v.shape[1], v.shape[2]
    P = width // mm.nheads
    probe = torch.zeros(L, L, width, dtype=v.dtype)
    for j in range(L):
        probe[j, j, ::P] = 1.0
    rest = [a.expand(L, *a.shape[1:]) for a in seen["args"][1:]]
    kwargs = {k: (t.expand(L, *t.shape[1:]) if isinstance(t, torch.Tensor) else t) for k, t in seen["kwargs"].items()}
    y = mm(probe, *rest, **kwargs) - probe                       # (L=j, L=i, width)
    return y[:, :, ::P].permute(2, 1, 0)                         # (H, i, j)


def our_mixing_matrix(ours, u: torch.Tensor) -> torch.Tensor:
    M = ours.matrix(u[:1]).to_dense() * ours.mixer.value_scale
    return M.expand(1, ours.nheads, -1, -1)[0]


def check_row(row: Row, classes, L: int | None = None, seed: int = 0, dtype=torch.float64) -> dict:
    """Build, copy, run and compare one row. Returns {"row", "status", ...}: status "ok" with the errors,
    or "cannot build in the released code" with the reason."""
    out = {"row": row.label, "mixer": row.ours[0], "sequence_aligned": row.ours[1], "options": row.ours[2],
           "note": row.note}
    if row.cannot_build:
        return out | {"status": "cannot build in the released code", "reason": row.cannot_build}
    L = CONFIG["max_seq_len"] if L is None else L
    torch.manual_seed(seed)
    try:
        paper = build_paper(row, classes).to(dtype)
        perturb_scalars(paper, seed)
        u = torch.randn(BATCH, L, CONFIG["d_model"], dtype=dtype, generator=torch.Generator().manual_seed(seed + 1))
        with torch.no_grad():
            y_paper = paper(u)
    except Exception as e:
        where = traceback.extract_tb(e.__traceback__)[-1]
        return out | {"status": "cannot build in the released code",
                      "reason": f"{type(e).__name__}: {e} ({Path(where.filename).name}:{where.lineno})"}
    ours = build_ours(row).to(dtype)
    copy_weights(row, paper, ours)
    with torch.no_grad():
        y_ours = ours(u)
        out |= {"status": "ok", "output": _errors(y_ours, y_paper)}
        if row.probe:
            out["matrix"] = _errors(our_mixing_matrix(ours, u), paper_mixing_matrix(paper, u))
    return out


# ----------------------------------------------------------------------------------------- report
def _fmt(e: dict | None) -> str:
    return "—" if e is None else f"{e['max_abs']:.1e} / {e['max_rel']:.1e}"


def markdown(results: list[dict], meta: dict) -> str:
    lines = ["| row | mixerzoo mixer | output max abs / rel error | mixing matrix max abs / rel error | note |",
             "|---|---|---|---|---|"]
    for r in results:
        mixer = f"`{r['mixer']}` {'SA' if r['sequence_aligned'] else 'fixed'}"
        if r["status"] != "ok":
            lines.append(f"| {r['row']} | {mixer} | cannot build in the released code: {r['reason']} | | |")
            continue
        lines.append(f"| {r['row']} | {mixer} | {_fmt(r['output'])} | {_fmt(r.get('matrix'))} | {r['note']} |")
    cfg = ", ".join(f"{k}={v}" for k, v in meta["config"].items())
    lines += ["", f"float64 on {meta['device']}; configuration: {cfg}, batch {BATCH}, L = max_seq_len.",
              f"Released code: goombalab/hydra {meta['paper_commit']}; {meta['paper_ops']}."]
    return "\n".join(lines) + "\n"


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(path: Path) -> str | None:
    try:
        return subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except Exception:
        return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.paper_fidelity", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=None, help="directory for fidelity.md and fidelity.json (default: print only)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="cpu (default): the released code's scans through mamba_ssm's torch references")
    ap.add_argument("--paper-commit", default=None,
                    help="the goombalab/hydra commit on PYTHONPATH (read from git when the package is in a checkout)")
    args = ap.parse_args(argv)
    try:
        classes = import_paper()
    except PaperCodeMissing as e:
        print(f"paper_fidelity: the released Hydra code is not importable ({e}); put goombalab/hydra's `hydra` "
              f"package, mamba_ssm and einops on PYTHONPATH (results/fidelity/README.md)", file=sys.stderr)
        return 2
    import hydra
    import mixers
    ops = use_torch_references() if args.device == "cpu" else "mamba_ssm's Triton kernels (float32 accumulation)"
    if args.device == "cuda":
        torch.set_default_device("cuda")
    results = [check_row(row, classes) for row in ROWS]
    meta = {"command": "python -m benchmarks.paper_fidelity " + " ".join(argv if argv is not None else sys.argv[1:]),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "device": args.device, "config": CONFIG, "batch": BATCH, "dtype": "float64",
            "paper_commit": args.paper_commit or _git(Path(hydra.__file__).parent) or "unknown",
            "paper_ops": ops,
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "mixerzoo": _version("mixerzoo"),
                         "mixerzoo_git": _git(Path(mixers.__file__).parent)}}
    md = markdown(results, meta)
    print(md, end="")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "fidelity.md").write_text(md)
        (out / "fidelity.json").write_text(json.dumps({"meta": meta, "rows": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
