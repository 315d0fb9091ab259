"""The task interface the trainer relies on (one obvious place for it).

A task produces batches as dicts of tensors:

* ``input_ids``: ``(B, L)`` long
* ``attention_mask``: ``(B, L)`` bool, True on real tokens (padding is False)
* ``labels``: token tasks ``(B, L)`` long with ``IGNORE_INDEX`` where no prediction is scored;
  sequence tasks ``(B,)`` long class ids, or ``(B,)`` float for regression (``num_labels == 1``)

Training batches are a pure function of ``(seed, step)`` so that a run resumed from a checkpoint at
step s sees exactly the batches it would have seen (``train_batch``). Evaluation splits are fixed.
Helpers for that: :func:`generator_for` (a generator seeded from any tuple of ints/strings) and
:func:`epoch_indices` (per-epoch permutations). :meth:`Task.split_seq_len` gives each split's length
(``val_2x`` is twice the training length). Missing data raises :class:`DataUnavailableError` (an
``OSError``), bad options ``ValueError``.
"""
from __future__ import annotations

import functools
import hashlib
from typing import Callable, ClassVar, Iterator

import torch
import torch.nn.functional as F

from structured._registry import Registry

IGNORE_INDEX = -100
KINDS = ("token", "sequence")


class DataUnavailableError(OSError):
    """The data a task needs cannot be found or reached here (missing files, no network, an optional
    library such as ``datasets`` not installed). A stage marked ``optional`` catches this and is
    recorded as unavailable; everything else (bad options, malformed files) stays a ``ValueError``."""


def generator_for(*parts) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from ``parts`` (ints/strings), e.g. ``("mqar", seed, step)``.

    The seed is the first 63 bits of SHA-256 of ``repr(parts)``, so nearby seeds/steps give unrelated
    streams and the result does not depend on Python's per-process string hashing.
    """
    digest = hashlib.sha256(repr(tuple(parts)).encode()).digest()
    gen = torch.Generator()
    gen.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return gen


@functools.lru_cache(maxsize=8)
def _epoch_permutation(num_items: int, salt: str, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(num_items, generator=generator_for(salt, "epoch", seed, epoch))


def epoch_indices(num_items: int, step: int, batch_size: int, seed: int, salt: str = "") -> torch.Tensor:
    """Indices of the items in training batch ``step``: ``(batch_size,)`` long.

    Example number ``p = step * batch_size + j`` is item ``perm_e[p % num_items]`` of epoch
    ``e = p // num_items``, where ``perm_e`` is a random permutation drawn from ``(salt, seed, e)``:
    every item is seen once per epoch, and the batch is a pure function of the arguments.
    """
    check_int("num_items", num_items, minimum=1)
    check_int("step", step, minimum=0)
    check_int("batch_size", batch_size, minimum=1)
    positions = step * batch_size + torch.arange(batch_size)
    epochs, offsets = positions // num_items, positions % num_items
    out = torch.empty(batch_size, dtype=torch.long)
    for epoch in epochs.unique().tolist():
        sel = epochs == epoch
        out[sel] = _epoch_permutation(num_items, salt, int(seed), int(epoch))[offsets[sel]]
    return out


def check_int(name: str, value, minimum: int | None = None, maximum: int | None = None) -> int:
    """Return ``value`` if it is an int (not bool) within ``[minimum, maximum]``, else ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_choice(name: str, value, allowed) -> object:
    """Return ``value`` if it is one of ``allowed``, else ValueError naming the argument and the choices."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return value


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

    def split_seq_len(self, split: str) -> int:
        """Sequence length of the batches of ``split`` (``train`` or an eval split). A model whose
        parameterization is tied to a length (fixed mixers) cannot run splits longer than it was
        built for: the trainer reports those as "not extendable"."""
        if split != "train" and split not in self.eval_splits:
            raise ValueError(f"split must be 'train' or one of {self.eval_splits} for task {self.name!r}, "
                             f"got {split!r}")
        return self.seq_len

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
        """Metrics of a sequence task over a whole split (logits ``(n, num_labels)`` and labels ``(n,)``
        concatenated over its batches). Default: loss + accuracy (regression: loss only)."""
        if self.kind == "sequence" and self.num_labels == 1:
            return {"loss": float(F.mse_loss(logits.float().squeeze(-1), labels.float()))}
        return {"loss": float(F.cross_entropy(logits.float(), labels)),
                "accuracy": float((logits.argmax(-1) == labels).float().mean())}

    def token_metrics(self, loss: float, accuracy: float) -> dict[str, float]:
        """Metrics of a token task from the mean cross-entropy and accuracy over all scored positions."""
        return {"loss": loss, "accuracy": accuracy}

    @torch.no_grad()
    def evaluate(self, predict: Callable[[dict], torch.Tensor], split: str, batch_size: int) -> dict[str, float]:
        """Run ``predict(batch) -> logits`` over a split and compute its metrics.

        Token tasks accumulate the loss and accuracy batch by batch on the logits' device (an MLM split
        has far too many ``(positions, vocab)`` logits to keep); sequence tasks gather the logits of
        the whole split for :meth:`compute_metrics` (F1, correlations need them all)."""
        if split not in self.eval_splits:
            raise ValueError(f"split must be one of {self.eval_splits} for task {self.name!r}, got {split!r}")
        all_logits, all_labels = [], []
        loss_sum, correct, count = 0.0, 0, 0
        for batch in self.eval_batches(split, batch_size):
            logits = predict(batch).float()
            labels = batch["labels"].to(logits.device)
            if self.kind == "token":
                keep = labels != IGNORE_INDEX
                logits, labels = logits[keep], labels[keep]
                loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
                correct += int((logits.argmax(-1) == labels).sum())
                count += int(keep.sum())
            else:
                all_logits.append(logits.cpu())
                all_labels.append(labels.cpu())
        if self.kind == "token":
            if count == 0:
                raise ValueError(f"split {split!r} of task {self.name!r} has no scored positions")
            return self.token_metrics(loss_sum / count, correct / count)
        if not all_logits:
            raise ValueError(f"split {split!r} of task {self.name!r} is empty")
        return self.compute_metrics(torch.cat(all_logits), torch.cat(all_labels))


_TASKS = Registry("task")


class HeldSequences(Task):
    """A sequence task whose splits are held whole as ``self._data[split] = (input_ids, attention_mask,
    labels)`` tensors: training batches are epoch-shuffled (salted by ``batch_salt``, default the task's
    name), evaluation batches are taken in order."""

    kind: ClassVar[str] = "sequence"

    @property
    def batch_salt(self) -> str:
        return self.name

    def train_batch(self, step: int, batch_size: int, seed: int) -> dict[str, torch.Tensor]:
        ids, attention, labels = self._data["train"]
        idx = epoch_indices(len(ids), step, batch_size, int(seed), salt=self.batch_salt)
        return {"input_ids": ids[idx], "attention_mask": attention[idx], "labels": labels[idx]}

    def eval_batches(self, split: str, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        self.split_seq_len(split)
        check_int("batch_size", batch_size, minimum=1)
        ids, attention, labels = self._data[split]
        for s in range(0, len(ids), batch_size):
            yield {"input_ids": ids[s:s + batch_size], "attention_mask": attention[s:s + batch_size],
                   "labels": labels[s:s + batch_size]}


def register_task(name: str):
    def deco(cls):
        _TASKS.add(name, cls)
        cls.name = name
        return cls
    return deco


def task_names() -> list[str]:
    return _TASKS.names()


def get_task(name: str) -> type[Task]:
    return _TASKS.lookup(name)
