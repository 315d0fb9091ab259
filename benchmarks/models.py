"""Model-level training speed: a whole masked-LM training step of every Table 2 / Table 3 row.

    python -m benchmarks.models --device cuda --out results/bench      # or: mixerzoo bench models ...
    python -m benchmarks.models --quick                                 # CPU smoke test, tiny models

Each row is the model a researcher trains, at the paper's scale (Hydra paper, Table 2 setup): a
:class:`mixers.MixerForMaskedLM` of 12 mixer-only layers, d_model 768, expand 2, headdim 128, qk_dim 16,
vocabulary 30522, no MLP (the matrix-mixer ablation's BERT-size model). One step is what the trainer does:
bf16 autocast (CUDA), forward, masked-LM cross-entropy over the full vocabulary at every position (15%
of the positions carry labels, as BERT), backward, one fused AdamW step. ``--tokens`` tokens per step
(batch = tokens / L), so rows and lengths compare at equal work per step. Reported: tokens per second
(median over the timed steps, after warm-up), milliseconds per step, peak GPU memory.

Rows (``--rows``, comma-separated; default: every row below that can be built here):

* ``<mixer>-sa`` / ``<mixer>-fixed``: our block with a registered mixer, sequence-aligned or fixed
  (Table 2: dense and dft fixed only; toeplitz, vandermonde, cauchy, low_rank, attention, quasiseparable
  both; Table 3: hydra (separate B, C per direction), semiseparable, bidir_add, bidir_mult, bidir_concat
  sequence-aligned);
* ``bert-base``: transformers' ``BertForMaskedLM`` (BERT-base, SDPA attention), when transformers is installed;
* ``paper-hydra``: the Hydra paper's own layer (goombalab/hydra ``hydra.modules.hydra.Hydra`` on mamba_ssm's
  Triton scan) in place of our block, same encoder, when importable (install it outside the repository and
  put it on ``PYTHONPATH``); its d_state and headdim follow ``--d-state`` and ``--headdim``.

A cell that runs out of memory is recorded as ``oom``; another failure as ``error`` with its message; the
remaining cells go on. The JSON is rewritten after every cell, so an interrupted run keeps what it measured, and
``--resume`` measures only the cells it lacks (the whole default grid takes longer than one 10-minute call).
``--profile`` also writes a torch.profiler table of each cell's step (top kernels by device time).
``--chunk-size`` sets the chunk of the SSD products' torch algorithms (the chunk-parallel pass that compile
traces, and the CPU's blocked passes; the Triton scans plan their own): a number, or ``seq`` for one chunk
holding the whole sequence (the quadratic form, no chunk states).

Outputs in ``--out``: ``models-<device>[-<tag>].json`` (device, versions, argv, configuration, cells) and
``.png`` (tokens/s against L, one line per row).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks import parse_device

TABLE2 = ("dense-fixed", "dft-fixed") + tuple(f"{m}-{p}" for m in ("toeplitz", "vandermonde", "cauchy", "low_rank",
                                                                      "attention", "quasiseparable")
                                              for p in ("fixed", "sa"))
TABLE3 = ("hydra-sa", "semiseparable-sa", "bidir_add-sa", "bidir_mult-sa", "bidir_concat-sa")
PEERS = ("bert-base", "paper-hydra")
DEFAULT_ROWS = PEERS + TABLE2 + TABLE3
DEFAULT_LENGTHS = (128, 512, 2048, 8192, 16384)
PAPER = dict(vocab_size=30522, d_model=768, n_layers=12, expand=2, headdim=128, qk_dim=16)
QUICK = dict(vocab_size=512, d_model=32, n_layers=2, expand=2, headdim=16, qk_dim=8)
MASK_PROB = 0.15


# ----------------------------------------------------------------------------------------------- models
class PaperHydraBlock(nn.Module):
    """The Hydra paper's own layer behind our block's interface (``block(u, mask)``; no padding)."""

    def __init__(self, d_model, expand, headdim, d_state):
        super().__init__()
        from hydra.modules.hydra import Hydra  # goombalab/hydra, installed outside the repository
        self.layer = Hydra(d_model=d_model, d_state=d_state, d_conv=7, expand=expand, headdim=headdim,
                           chunk_size=256)

    def forward(self, u, mask=None):
        if mask is not None:
            raise ValueError("paper-hydra rows take no padding mask")
        return self.layer(u)


def build(row: str, length: int, cfg: dict, d_state: int | None):
    """The masked-LM model of one row (on the CPU, float32 parameters)."""
    if row == "bert-base":
        from transformers import BertConfig, BertForMaskedLM
        c = BertConfig(vocab_size=cfg["vocab_size"], hidden_size=cfg["d_model"], num_hidden_layers=cfg["n_layers"],
                       num_attention_heads=max(1, cfg["d_model"] // 64), intermediate_size=4 * cfg["d_model"],
                       max_position_embeddings=max(512, length), attn_implementation="sdpa")
        return BertForMaskedLM(c)
    import mixers
    if row == "paper-hydra":
        mixer, sa = "quasiseparable", True
    else:
        mixer, _, param = row.rpartition("-")
        if param not in ("sa", "fixed") or mixer not in mixers.names():
            raise ValueError(f"unknown row {row!r}")
        sa = param == "sa"
    kw = {"d_state": d_state} if d_state is not None and mixer in _SSM_MIXERS else {}
    enc = mixers.MixerEncoder(cfg["vocab_size"], cfg["d_model"], cfg["n_layers"], mixer, sa, max_seq_len=length,
                              mlp_ratio=0, expand=cfg["expand"], headdim=cfg["headdim"], qk_dim=cfg["qk_dim"], **kw)
    if row == "paper-hydra":
        N = d_state if d_state is not None else enc.blocks[0].mixer.d_state
        for i in range(len(enc.blocks)):
            enc.blocks[i] = PaperHydraBlock(cfg["d_model"], cfg["expand"], cfg["headdim"], N)
    return mixers.MixerForMaskedLM(enc)


_SSM_MIXERS = ("semiseparable", "quasiseparable", "bidir_add", "bidir_mult", "bidir_concat")


def rows_available(rows):
    """Split the requested rows into (buildable, {row: why not})."""
    import importlib.util
    import mixers
    ok, missing = [], {}
    for row in rows:
        if row == "bert-base" and importlib.util.find_spec("transformers") is None:
            missing[row] = "transformers is not installed (pip install 'mixerzoo[bench]')"
        elif row == "paper-hydra" and importlib.util.find_spec("hydra") is None:
            missing[row] = "the paper's code (goombalab/hydra on mamba_ssm) is not importable"
        elif row not in PEERS:
            mixer, _, param = row.rpartition("-")
            if mixer not in mixers.names() or param not in ("sa", "fixed"):
                raise ValueError(f"--rows: unknown row {row!r}; rows are <mixer>-sa, <mixer>-fixed "
                                 f"(mixers: {', '.join(sorted(mixers.names()))}), {', '.join(PEERS)}")
            allowed = mixers.names()[mixer]
            if ("sequence_aligned" if param == "sa" else "fixed") not in allowed:
                raise ValueError(f"--rows: {row!r}: mixer {mixer!r} supports only {', '.join(allowed)}")
            ok.append(row)
        else:
            ok.append(row)
    return ok, missing


# ----------------------------------------------------------------------------------------------- one cell
def _logits(model, ids):
    out = model(input_ids=ids)
    return out.logits if hasattr(out, "logits") else out


@contextmanager
def chunk_size_of_products(chunk):
    """Within the block, every registered structured class with a ``chunk_size`` runs its torch algorithm in
    chunks of ``chunk`` positions (None: their own defaults)."""
    import structured
    classes = [structured.get(n) for n in structured.names()]
    classes = [c for c in classes if isinstance(c.__dict__.get("chunk_size"), int)]
    before = [c.chunk_size for c in classes]
    try:
        if chunk is not None:
            for c in classes:
                c.chunk_size = chunk
        yield
    finally:
        for c, q in zip(classes, before):
            c.chunk_size = q


def measure(row, length, tokens, cfg, device, d_state=None, steps=5, warmup=2, compile_model=None,
            profile_path=None, chunk_size=None) -> dict:
    """Train ``steps`` timed steps (after ``warmup``) of one row at one length; tokens/s, ms/step, peak memory.
    ``chunk_size``: the SSD products' chunk (an int, ``"seq"`` for one chunk of ``length``, None: default)."""
    with chunk_size_of_products(length if chunk_size == "seq" else chunk_size):
        return _measure(row, length, tokens, cfg, device, d_state, steps, warmup, compile_model, profile_path)


def _measure(row, length, tokens, cfg, device, d_state, steps, warmup, compile_model, profile_path) -> dict:
    batch = max(1, tokens // length)
    torch.manual_seed(0)
    model = build(row, length, cfg, d_state).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    step_model = model
    if compile_model == "layers":
        # Regional compilation: each repeated layer (every module of an nn.ModuleList) is compiled on its
        # own; identical layers share one compiled graph, so compile time does not grow with depth.
        for lst in [m for m in model.modules() if isinstance(m, nn.ModuleList)]:
            for layer in lst:
                layer.compile(dynamic=False)
    elif compile_model:
        step_model = torch.compile(model, dynamic=False)
    g = torch.Generator(device="cpu").manual_seed(0)
    ids = torch.randint(0, cfg["vocab_size"], (batch, length), generator=g).to(device)
    labels = torch.where(torch.rand(batch, length, generator=g) < MASK_PROB,
                         torch.randint(0, cfg["vocab_size"], (batch, length), generator=g),
                         torch.full((batch, length), -100)).to(device)
    ctx = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else nullcontext

    def step():
        with ctx():
            logits = _logits(step_model, ids)
        loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), labels.view(-1), ignore_index=-100)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        loss = step()
    sync()
    if not math.isfinite(loss.item()):
        raise RuntimeError(f"non-finite loss {loss.item()} in warm-up")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    if profile_path is not None:
        from torch.profiler import ProfilerActivity, profile
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=acts) as prof:
            step()
            sync()
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        Path(profile_path).write_text(prof.key_averages().table(sort_by=key, row_limit=40, max_name_column_width=70))
    t = statistics.median(times)
    return {"row": row, "L": length, "batch": batch, "status": "ok", "tokens_per_s": batch * length / t,
            "step_ms": 1e3 * t, "peak_gb": None if peak is None else peak / 2 ** 30, "params_m": n_params / 1e6}


# ----------------------------------------------------------------------------------------------- driver
def _device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})"


def _versions():
    v = {"torch": torch.__version__, "python": platform.python_version()}
    for name in ("triton", "transformers"):
        try:
            v[name] = __import__(name).__version__
        except Exception:  # not installed, or broken on this platform
            pass
    return v


def _write_json(path: Path, data: dict):
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def plot(data: dict, path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5))
    rows = list(dict.fromkeys(c["row"] for c in data["cells"]))
    cmap = plt.get_cmap("tab20")
    for i, row in enumerate(rows):
        cells = sorted((c for c in data["cells"] if c["row"] == row and c["status"] == "ok"), key=lambda c: c["L"])
        if not cells:
            continue
        peer = row in PEERS
        ax.semilogx([c["L"] for c in cells], [c["tokens_per_s"] / 1e3 for c in cells], "-" if peer else "--",
                    marker="o", lw=2.5 if peer else 1.2, color="k" if row == "bert-base" else cmap(i % 20), label=row)
    ax.set_xlabel("sequence length L (tokens per step fixed)")
    ax.set_ylabel("training tokens / s (thousands)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"MLM training step, {data['config']['n_layers']} layers, d_model {data['config']['d_model']} "
                 f"({data['device']})", fontsize=9)
    ax.legend(fontsize=7, ncol=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(data: dict) -> str:
    """Markdown: one row per model row, one column per L (k tokens/s; oom / error)."""
    Ls = sorted({c["L"] for c in data["cells"]})
    lines = ["| row | " + " | ".join(f"L={L}" for L in Ls) + " |", "|---" * (len(Ls) + 1) + "|"]
    for row in dict.fromkeys(c["row"] for c in data["cells"]):
        cells = {c["L"]: c for c in data["cells"] if c["row"] == row}
        out = []
        for L in Ls:
            c = cells.get(L)
            out.append("" if c is None else f"{c['tokens_per_s'] / 1e3:.0f}k ({c['peak_gb']:.0f} GB)"
                       if c["status"] == "ok" and c["peak_gb"] is not None else
                       f"{c['tokens_per_s'] / 1e3:.1f}k" if c["status"] == "ok" else c["status"])
        lines.append(f"| {row} | " + " | ".join(out) + " |")
    return "\n".join(lines)


def _resumable_cells(path: Path, config: dict, fail) -> dict:
    """``{(row, L): cell}`` of the measured cells (ok or oom) in ``path``, written with the same ``config``; cells
    that failed with an error are measured again. No file: nothing to keep."""
    if not path.exists():
        return {}
    try:
        prev = json.loads(path.read_text())
        cells, prev_config = prev["cells"], prev["config"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        fail(f"--resume: {path} is not a readable benchmark file ({type(e).__name__}: {e}); move it away or drop "
             f"--resume")
    if prev_config != config:
        keys = sorted(k for k in set(config) | set(prev_config) if config.get(k) != prev_config.get(k))
        fail(f"--resume: {path} was measured with another configuration (differs in {', '.join(keys)}); use "
             f"another --out or --tag, or drop --resume")
    return {(c["row"], c["L"]): c for c in cells if c.get("status") in ("ok", "oom")}


def _positive_ints(ap, flag, text):
    try:
        vals = tuple(int(x) for x in text.split(","))
    except ValueError:
        ap.error(f"{flag} must be comma-separated positive integers, got {text!r}")
    if not vals or any(v < 1 for v in vals):
        ap.error(f"{flag} must be comma-separated positive integers, got {text!r}")
    return vals


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="mixerzoo bench models", description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:k] (default cpu)")
    ap.add_argument("--out", default="results/bench", help="output folder (default results/bench)")
    ap.add_argument("--rows", default=None, help=f"comma-separated rows (default: {', '.join(DEFAULT_ROWS)})")
    ap.add_argument("--lengths", default=None, help=f"comma-separated L (default {DEFAULT_LENGTHS})")
    ap.add_argument("--tokens", type=int, default=None, help="tokens per step, batch = tokens // L (default 32768)")
    ap.add_argument("--d-state", type=int, default=None, help="SSM state size N (default nheads * qk_dim = 192)")
    ap.add_argument("--headdim", type=int, default=None, help="channels per head P (default 128)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per cell (default 5)")
    ap.add_argument("--compile", nargs="?", const="model", default=None, choices=("model", "layers"),
                    help="torch.compile each model before timing: the whole model (default when given) or "
                         "each repeated layer on its own ('layers': regional compilation, faster to compile)")
    ap.add_argument("--profile", action="store_true", help="also write a torch.profiler table per cell")
    ap.add_argument("--chunk-size", default=None,
                    help="chunk of the SSD products' torch algorithms (compiled or CPU; the Triton scans plan their "
                         "own): a positive integer, or 'seq' for one chunk of the whole sequence (default: 64)")
    ap.add_argument("--tag", default="", help="suffix of the output names (e.g. a configuration label)")
    ap.add_argument("--resume", action="store_true",
                    help="keep the cells already measured (ok or oom) in the output JSON of the same configuration "
                         "and measure only the rest: a run cut short (a time limit, an interruption) goes on")
    ap.add_argument("--quick", action="store_true", help="tiny models, L in (32, 64), 256 tokens: a smoke test")
    args = ap.parse_args(argv)
    device = parse_device(args.device, ap.error)
    if args.tag and not args.tag.replace("-", "").replace("_", "").isalnum():
        ap.error(f"--tag must be letters, digits, '-' or '_', got {args.tag!r}")
    cfg = dict(QUICK if args.quick else PAPER)
    if args.headdim is not None:
        if args.headdim < 1 or (cfg["expand"] * cfg["d_model"]) % args.headdim:
            ap.error(f"--headdim must divide expand * d_model = {cfg['expand'] * cfg['d_model']}, got {args.headdim}")
        cfg["headdim"] = args.headdim
    if args.d_state is not None and args.d_state < 1:
        ap.error(f"--d-state must be a positive integer, got {args.d_state}")
    chunk = args.chunk_size
    if chunk is not None and chunk != "seq":
        chunk = int(chunk) if chunk.isdigit() else 0
        if chunk < 1:
            ap.error(f"--chunk-size must be a positive integer or 'seq', got {args.chunk_size!r}")
    lengths = _positive_ints(ap, "--lengths", args.lengths) if args.lengths else \
        ((32, 64) if args.quick else DEFAULT_LENGTHS)
    tokens = args.tokens if args.tokens is not None else (256 if args.quick else 32768)
    if tokens < 1:
        ap.error(f"--tokens must be a positive integer, got {tokens}")
    if args.steps < 1:
        ap.error(f"--steps must be a positive integer, got {args.steps}")
    requested = args.rows.split(",") if args.rows else list(DEFAULT_ROWS)
    try:
        rows, missing = rows_available(requested)
    except ValueError as e:
        ap.error(str(e))
    for row, why in missing.items():
        print(f"skipping {row}: {why}", file=sys.stderr)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"models-{device.type}{'-quick' if args.quick else ''}{'-' + args.tag if args.tag else ''}"
    data = {"device": _device_name(device), "versions": _versions(), "argv": sys.argv,
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "config": {**cfg, "tokens_per_step": tokens, "d_state": args.d_state, "mlp_ratio": 0,
                       "precision": "bf16 autocast" if device.type == "cuda" else "float32",
                       "compile": args.compile, "chunk_size": chunk, "mask_prob": MASK_PROB, "optimizer": "AdamW (fused on CUDA)",
                       "kernels": os.environ.get("MIXERZOO_KERNELS", "auto"), "steps": args.steps},
            "skipped_rows": missing, "cells": []}
    kept = _resumable_cells(out / f"{stem}.json", data["config"], ap.error) if args.resume else {}
    from tqdm.auto import tqdm
    bar = tqdm(total=len(rows) * len(lengths), desc="models", unit="cell")
    for row in rows:
        for L in lengths:
            if (row, L) in kept:
                data["cells"].append(kept[(row, L)])
                bar.update(1)
                continue
            bar.set_postfix_str(f"{row} L={L}")
            prof = out / f"{stem}-profile-{row}-L{L}.txt" if args.profile else None
            try:
                cell = measure(row, L, tokens, cfg, device, args.d_state, args.steps, compile_model=args.compile,
                               profile_path=prof, chunk_size=chunk)
            except torch.OutOfMemoryError:
                cell = {"row": row, "L": L, "batch": max(1, tokens // L), "status": "oom"}
            except Exception as e:  # one failing cell never stops the others; its message is kept
                cell = {"row": row, "L": L, "batch": max(1, tokens // L), "status": "error",
                        "error": f"{type(e).__name__}: {e}"[:500]}
            if device.type == "cuda":
                torch.cuda.empty_cache()
            data["cells"].append(cell)
            _write_json(out / f"{stem}.json", data)
            bar.update(1)
            bar.write(f"{row:22s} L={L:6d} " + (f"{cell['tokens_per_s'] / 1e3:8.1f}k tok/s  {cell['step_ms']:8.1f} ms"
                                                  + (f"  {cell['peak_gb']:.1f} GB" if cell["peak_gb"] else "")
                                                  if cell["status"] == "ok" else cell["status"] + " " +
                                                  cell.get("error", "")))
    bar.close()
    plot(data, out / f"{stem}.png")
    print(table(data))
    print(f"wrote {out / (stem + '.json')} and {out / (stem + '.png')}")
    return 1 if any(c["status"] == "error" for c in data["cells"]) else 0


if __name__ == "__main__":
    sys.exit(main())
