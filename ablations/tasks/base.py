"""The task interface the trainer relies on (one obvious place for it).

A task produces batches as dicts of tensors:

* ``input_ids``: ``(B, L)`` long
* ``attention_mask``: ``(B, L)`` bool, True on real tokens (padding is False)
* ``labels``: token tasks ``(B, L)`` long with ``IGNORE_INDEX`` where no prediction is scored;
  sequence tasks ``(B,)`` long class ids, or ``(B,)`` float for regression (``num_labels == 1``)

Training batches are a pure function of ``(seed, step)`` so that a run resumed from a checkpoint at
step s sees exactly the batches it would have seen (``train_batch``). Evaluation splits are fixed.
"""
from __future__ import annotations

from typing import Callable, ClassVar, Iterator

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
KINDS = ("token", "sequence")


class Task:
    """Base class. Subclasses set the class attributes and implement ``train_batch``, ``eval_batches``
    and (optionally) ``compute_metrics``; register with ``@register_task("name")``.

    Attributes
    ----------
    kind: "token" (per-position prediction over ``vocab_size``; MLM, recall) or "sequence"
          (one label per sequence; ``num_labels`` classes, 1 = regression)
    vocab_size: input vocabulary size (embedding rows)
    num_labels: output classes (token tasks: ``vocab_size``)
    seq_len: training sequence length
    eval_splits: names accepted by ``eval_batches`` (e.g. ``("val",)`` or ``("val", "val_2x")``)
    primary_metric: the metric reported in tables; ``higher_is_better`` tells its direction
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "token"
    primary_metric: ClassVar[str] = "accuracy"
    higher_is_better: ClassVar[bool] = True

    vocab_size: int
    num_labels: int
    seq_len: int
    eval_splits: tuple[str, ...] = ("val",)

    def train_batch(self, step: int, batch_size: int, seed: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def eval_batches(self, split: str, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        raise NotImplementedError

    def describe(self) -> dict:
        """JSON-able facts recorded with every result (data hashes, sizes, tokenizer, ...)."""
        return {"task": self.name, "kind": self.kind, "vocab_size": self.vocab_size,
                "num_labels": self.num_labels, "seq_len": self.seq_len}

    # ------------------------------------------------------------------ loss and metrics
    def loss(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        labels = batch["labels"]
        if self.kind == "token":
            return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
        if self.num_labels == 1:
            return F.mse_loss(logits.float().squeeze(-1), labels.float())
        return F.cross_entropy(logits.float(), labels)

    def compute_metrics(self, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """Metrics over a whole split (logits and labels concatenated over its batches; token tasks
        pass only the scored positions: ``logits (n, V)``, ``labels (n,)``). Default: loss + accuracy."""
        if self.kind == "sequence" and self.num_labels == 1:
            return {"loss": float(F.mse_loss(logits.float().squeeze(-1), labels.float()))}
        return {"loss": float(F.cross_entropy(logits.float(), labels)),
                "accuracy": float((logits.argmax(-1) == labels).float().mean())}

    @torch.no_grad()
    def evaluate(self, predict: Callable[[dict], torch.Tensor], split: str, batch_size: int) -> dict[str, float]:
        """Run ``predict(batch) -> logits`` over a split and compute its metrics."""
        if split not in self.eval_splits:
            raise ValueError(f"split must be one of {self.eval_splits} for task {self.name!r}, got {split!r}")
        all_logits, all_labels = [], []
        for batch in self.eval_batches(split, batch_size):
            logits = predict(batch).float().cpu()
            labels = batch["labels"].cpu()
            if self.kind == "token":
                keep = labels != IGNORE_INDEX
                logits, labels = logits[keep], labels[keep]
            all_logits.append(logits)
            all_labels.append(labels)
        if not all_logits:
            raise ValueError(f"split {split!r} of task {self.name!r} is empty")
        return self.compute_metrics(torch.cat(all_logits), torch.cat(all_labels))


_TASKS: dict[str, type[Task]] = {}


def register_task(name: str):
    def deco(cls):
        if name in _TASKS and _TASKS[name] is not cls:
            raise ValueError(f"a task named {name!r} is already registered")
        cls.name = name
        _TASKS[name] = cls
        return cls
    return deco


def task_names() -> list[str]:
    return sorted(_TASKS)


def get_task(name: str) -> type[Task]:
    try:
        return _TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; registered: {', '.join(task_names())}") from None
