"""Synthetic multi-query associative recall (MQAR), generated on the fly; no data files.

MQAR (Arora et al., "Zoology: Measuring and Improving Recall in Efficient Language Models",
arXiv 2312.04927, 2023): a sequence holds ``N`` key-value pairs and ``N`` queries; at each query
position (the query token is a key) the model must output the value paired with that key. Labels
exist only at query positions (``IGNORE_INDEX`` elsewhere), so accuracy is the fraction of queries
answered. Zoology's models are causal next-token predictors; our encoders predict the label at the
query's own position, which is equivalent for a causal model (it sees the query and everything before).

Token layout (``V = vocab_size``)::

    0                 [PAD]   (unused: every position is a real token; kept so 0 never means data)
    1                 filler  (positions that are neither a pair nor a query)
    2 .. 2+K-1        keys    K = (V - 2) // 2
    2+K .. V-1        values  V - 2 - K of them

``mqar`` (causal): ``k_1 v_1 ... k_N v_N`` first, then the ``N`` queries (each key once, in random
order) at uniformly random distinct positions of the remaining ``L - 2N`` slots, fillers elsewhere.
Zoology spaces queries by a power law; we use uniform positions (a simpler, documented variant).

``mqar_bidir``: the ``N`` pair units (2 tokens), ``N`` query units (1 token) and ``L - 3N`` fillers
are shuffled together uniformly, so each query precedes its pair with probability 1/2: a causal
mixer can answer at most about half of the queries, a bidirectional one all of them. A key appears
exactly twice (as a pair key, followed by its value, and as the query, never followed by a value),
so the task is unambiguous.

Training batches are a pure function of ``(seed, step)`` (:func:`~ablations.tasks.base.generator_for`);
the evaluation sets (``num_examples`` sequences each) are drawn once from ``eval_seed``. With
``extrapolate=True`` the split ``val_2x`` has sequences of ``2 * seq_len`` with the same number of
pairs, to test length extrapolation (only sequence-aligned mixers can run it; fixed
parameterizations are reported "not extendable" by the trainer via :meth:`split_seq_len`).

Cost: generating a ``(B, L)`` batch is ``O(B (L + V) log(L + V))`` (random permutations via sort).
"""
from __future__ import annotations

from typing import ClassVar, Iterator

import torch

from .base import IGNORE_INDEX, Task, check_int, generator_for, register_task

PAD_ID = 0
FILLER_ID = 1
FIRST_KEY_ID = 2


def recall_vocab(vocab_size: int) -> tuple[range, range]:
    """``(key_ids, value_ids)`` of the MQAR layout for ``vocab_size`` tokens (see module docstring)."""
    num_keys = (vocab_size - FIRST_KEY_ID) // 2
    return (range(FIRST_KEY_ID, FIRST_KEY_ID + num_keys), range(FIRST_KEY_ID + num_keys, vocab_size))


def generate_mqar(generator: torch.Generator, batch_size: int, seq_len: int, vocab_size: int,
                  num_kv_pairs: int, bidirectional: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``batch_size`` MQAR sequences.

    Returns ``input_ids (B, L)`` long and ``labels (B, L)`` long (the value at each query position,
    ``IGNORE_INDEX`` elsewhere). ``bidirectional=False``: pairs first, queries after (``mqar``);
    ``True``: pairs and queries shuffled together (``mqar_bidir``). Requires ``seq_len >= 3 N``
    and at least ``N`` keys.
    """
    keys_range, values_range = recall_vocab(vocab_size)
    n, length = num_kv_pairs, seq_len
    # distinct keys per row: the first n entries of a random permutation of the key ids
    keys = torch.rand(batch_size, len(keys_range), generator=generator).argsort(dim=1)[:, :n] + keys_range.start
    values = torch.randint(len(values_range), (batch_size, n), generator=generator) + values_range.start
    input_ids = torch.full((batch_size, length), FILLER_ID, dtype=torch.long)
    labels = torch.full((batch_size, length), IGNORE_INDEX, dtype=torch.long)
    if not bidirectional:
        input_ids[:, 0:2 * n:2] = keys
        input_ids[:, 1:2 * n:2] = values
        query_pos = torch.rand(batch_size, length - 2 * n, generator=generator).argsort(dim=1)[:, :n] + 2 * n
    else:
        # items 0..n-1: pair units (2 tokens); n..2n-1: queries; 2n..: fillers (1 token each)
        num_items = length - n
        order = torch.rand(batch_size, num_items, generator=generator).argsort(dim=1)  # slot -> item
        item_len = torch.where(order < n, 2, 1)
        slot_start = item_len.cumsum(dim=1) - item_len
        item_start = torch.empty_like(order).scatter_(1, order, slot_start)  # item -> start position
        pair_pos = item_start[:, :n]
        query_pos = item_start[:, n:2 * n]
        input_ids.scatter_(1, pair_pos, keys)
        input_ids.scatter_(1, pair_pos + 1, values)
    input_ids.scatter_(1, query_pos, keys)
    labels.scatter_(1, query_pos, values)
    return input_ids, labels


class _RecallTask(Task):
    """Shared implementation of the MQAR tasks (the subclasses differ only in ``bidirectional``).

    Options: ``seq_len`` (L, >= 3 * num_kv_pairs), ``vocab_size`` (>= 2 + 2 * num_kv_pairs + 2, so
    there are N distinct keys and at least 2 values), ``num_kv_pairs`` (N), ``num_examples`` (size of
    each evaluation split), ``extrapolate`` (add ``val_2x`` at length 2L), ``eval_seed``.
    """

    kind = "token"
    primary_metric = "accuracy"
    higher_is_better = True
    bidirectional: ClassVar[bool] = False

    def __init__(self, seq_len: int = 128, vocab_size: int = 512, num_kv_pairs: int = 16,
                 num_examples: int = 1024, extrapolate: bool = False, eval_seed: int = 1234):
        check_int("num_kv_pairs", num_kv_pairs, minimum=1)
        check_int("seq_len", seq_len, minimum=3 * num_kv_pairs)
        check_int("vocab_size", vocab_size, minimum=FIRST_KEY_ID + 2 * num_kv_pairs + 2)
        check_int("num_examples", num_examples, minimum=1)
        check_int("eval_seed", eval_seed)
        if not isinstance(extrapolate, bool):
            raise ValueError(f"extrapolate must be True or False, got {extrapolate!r}")
        self.seq_len, self.vocab_size, self.num_labels = seq_len, vocab_size, vocab_size
        self.num_kv_pairs, self.num_examples = num_kv_pairs, num_examples
        self.extrapolate, self.eval_seed = extrapolate, eval_seed
        self.eval_splits = ("val", "val_2x") if extrapolate else ("val",)
        self._eval_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def split_seq_len(self, split: str) -> int:
        super().split_seq_len(split)  # validates the name
        return 2 * self.seq_len if split == "val_2x" else self.seq_len

    def _batch(self, input_ids: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids, dtype=torch.bool),
                "labels": labels}

    def train_batch(self, step: int, batch_size: int, seed: int) -> dict[str, torch.Tensor]:
        check_int("step", step, minimum=0)
        check_int("batch_size", batch_size, minimum=1)
        gen = generator_for(self.name, "train", int(seed), step)
        return self._batch(*generate_mqar(gen, batch_size, self.seq_len, self.vocab_size, self.num_kv_pairs,
                                          self.bidirectional))

    def eval_set(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The fixed evaluation split: ``input_ids, labels`` of shape ``(num_examples, split_seq_len)``."""
        length = self.split_seq_len(split)
        if split == "train":
            raise ValueError("split must be an evaluation split, got 'train'")
        if split not in self._eval_cache:
            gen = generator_for(self.name, "eval", split, self.eval_seed)
            self._eval_cache[split] = generate_mqar(gen, self.num_examples, length, self.vocab_size,
                                                    self.num_kv_pairs, self.bidirectional)
        return self._eval_cache[split]

    def eval_batches(self, split: str, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        check_int("batch_size", batch_size, minimum=1)
        input_ids, labels = self.eval_set(split)
        for start in range(0, len(input_ids), batch_size):
            yield self._batch(input_ids[start:start + batch_size], labels[start:start + batch_size])

    def describe(self) -> dict:
        keys, values = recall_vocab(self.vocab_size)
        return {**super().describe(), "num_kv_pairs": self.num_kv_pairs, "num_examples": self.num_examples,
                "eval_seed": self.eval_seed, "eval_splits": list(self.eval_splits),
                "split_seq_len": {s: self.split_seq_len(s) for s in self.eval_splits},
                "bidirectional": self.bidirectional,
                "token_layout": {"pad": PAD_ID, "filler": FILLER_ID, "keys": [keys.start, keys.stop],
                                 "values": [values.start, values.stop]},
                "reference": "Arora et al. 2023, Zoology (arXiv 2312.04927), MQAR; uniform query positions"}


@register_task("mqar")
class MQAR(_RecallTask):
    """Causal MQAR: all key-value pairs first, then the queries (see the module docstring)."""

    bidirectional = False


@register_task("mqar_bidir")
class MQARBidirectional(_RecallTask):
    """Bidirectional MQAR: pairs and queries shuffled together, so a query may precede its pair."""

    bidirectional = True
