"""Trained models a run leaves behind, in the ecosystem's layout, and :func:`load_run` to get them back.

A finished stage writes ``<run_dir>/models/<stage>/`` with ``config.json`` + ``model.safetensors``
(:meth:`mixers.MixerEncoder.save_pretrained` and the heads' equivalents; the config's ``"mixerzoo"`` key
records the task, its label names and the run id) and, for text tasks, ``tokenizer.json``
(``tokenizers.Tokenizer``). The run directory's own ``tokenizer.json`` is the first text stage's (the
pretraining tokenizer, shared by the fine-tuning stages).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

MODELS_DIR, TOKENIZER_NAME = "models", "tokenizer.json"


def export_stage(run_dir, stage: str, model, task, run_id: str | None = None) -> Path | None:
    """Write the stage's final model (and tokenizer) under ``run_dir/models/<stage>``; returns that
    directory, or None for a model without ``save_pretrained`` (a custom ``model.builder``)."""
    if not hasattr(model, "save_pretrained"):
        return None
    run_dir = Path(run_dir)
    target = run_dir / MODELS_DIR / stage
    target.parent.mkdir(parents=True, exist_ok=True)
    extra = {"task": task.name, "stage": stage, "run_id": run_id, "kind": task.kind}
    labels = getattr(task, "label_names", None)
    if labels is not None:
        extra["labels"] = list(labels)
    tokenizer = getattr(task, "tokenizer", None)
    # written into a fresh directory, then renamed: a reader never sees half a model
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{stage}."))
    try:
        model.save_pretrained(tmp, extra=extra)
        if tokenizer is not None:
            tokenizer.save(str(tmp / TOKENIZER_NAME))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if tokenizer is not None and not (run_dir / TOKENIZER_NAME).exists():
        shutil.copyfile(target / TOKENIZER_NAME, run_dir / TOKENIZER_NAME)
    return target


def stages(run_dir) -> list[str]:
    """The stages of ``run_dir`` that have an exported model, in training order."""
    run_dir = Path(run_dir)
    order = []
    summary = run_dir / "summary.json"
    if summary.exists():
        order = list(json.loads(summary.read_text()).get("stages", {}))
    found = {p.name for p in (run_dir / MODELS_DIR).glob("*") if (p / "config.json").is_file()}
    return [s for s in order if s in found] + sorted(found - set(order))


def load_run(run_dir, stage: str | None = None, map_location="cpu"):
    """``(model, tokenizer)`` of a finished run: the model of ``stage`` (default: the first exported
    stage, i.e. the pretrained MLM model when the run pretrains) in eval mode, and its
    ``tokenizers.Tokenizer`` (None for tasks without one, e.g. synthetic recall)."""
    import mixers
    run_dir = Path(run_dir)
    available = stages(run_dir)
    if not available:
        raise FileNotFoundError(f"run_dir {str(run_dir)!r} has no exported models ({MODELS_DIR}/<stage>/config.json); "
                                f"is it a finished run directory?")
    stage = available[0] if stage is None else stage
    if stage not in available:
        raise ValueError(f"stage must be one of {', '.join(available)} for {str(run_dir)!r}, got {stage!r}")
    path = run_dir / MODELS_DIR / stage
    model_type = json.loads((path / "config.json").read_text()).get("model_type")
    classes = {c.__name__: c for c in (mixers.MixerEncoder, mixers.MixerForMaskedLM,
                                       mixers.MixerForSequenceClassification)}
    if model_type not in classes:
        raise ValueError(f"{path / 'config.json'}: model_type must be one of {sorted(classes)}, got {model_type!r}")
    model = classes[model_type].from_pretrained(path, map_location=map_location)
    tokenizer = None
    if (path / TOKENIZER_NAME).exists():
        from tokenizers import Tokenizer
        tokenizer = Tokenizer.from_file(str(path / TOKENIZER_NAME))
    return model, tokenizer
