"""Masked language modelling (``mlm``): BERT masking, sequence packing, and the plumbing shared by the
text tasks (corpus + tokenizer set-up)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from .base import IGNORE_INDEX, Task, check_int, epoch_indices, generator_for, register_task
from .corpus import default_cache_dir, load_corpus
from .tokenizer import (CLS_ID, MASK_ID, PAD_ID, SEP_ID, SPECIAL_TOKENS, TOKENIZER_RECIPE, _encode_texts,
                        get_tokenizer, tokenizer_sha256)

# the smoke preset (``small=True``): max_documents applies to the english corpus
SMALL_PRESET = {"max_files_per_package": 60, "max_documents": 3000, "num_eval_sequences": 128, "max_val_per_class": 40}


# ----------------------------------------------------------------------------------------------- masking
def mask_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, generator: torch.Generator,
                vocab_size: int, mask_prob: float = 0.15, special_ids: Sequence[int] = range(len(SPECIAL_TOKENS)),
                mask_id: int = MASK_ID) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking (Devlin et al. 2019, sec. 3.1): each real, non-special token is selected with
    probability ``mask_prob``; a selected token becomes ``[MASK]`` with probability 0.8, a uniformly
    random non-special token (ids ``len(special_ids)..vocab_size-1``) with 0.1, and stays with 0.1.
    A sequence in which nothing was selected gets one selected token (uniform among its candidates), so
    no batch has an empty loss. ``input_ids, attention_mask`` (B, L) -> ``(masked_ids, labels)`` (B, L),
    labels = original id at selected positions and ``IGNORE_INDEX`` elsewhere. O(B L)."""
    special = torch.tensor(list(special_ids), dtype=input_ids.dtype)
    candidates = attention_mask.bool() & ~torch.isin(input_ids, special)
    selected = candidates & (torch.rand(input_ids.shape, generator=generator) < mask_prob)
    # rows with candidates but no selection: pick one candidate (random scores, argmax over candidates)
    scores = torch.rand(input_ids.shape, generator=generator).masked_fill(~candidates, -1.0)
    empty = candidates.any(-1) & ~selected.any(-1)
    selected[empty, scores[empty].argmax(-1)] = True
    action = torch.rand(input_ids.shape, generator=generator)
    random_ids = torch.randint(len(special), vocab_size, input_ids.shape, generator=generator, dtype=input_ids.dtype)
    masked = input_ids.clone()
    masked[selected & (action < 0.8)] = mask_id
    use_random = selected & (action >= 0.8) & (action < 0.9)
    masked[use_random] = random_ids[use_random]
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    return masked, labels


def pack_sequences(token_lists: Sequence[Sequence[int]], seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pack documents into ``[CLS] + (seq_len - 1)`` tokens of the stream ``doc_1 [SEP] doc_2 [SEP] ...``.
    The last sequence is padded with ``[PAD]`` (attention False), nothing is dropped.
    Returns ``input_ids (S, seq_len)`` long and ``attention_mask (S, seq_len)`` bool. O(total tokens)."""
    offsets = np.cumsum([0] + [len(x) for x in token_lists]).astype(np.int64)
    flat = np.fromiter((t for x in token_lists for t in x), dtype=np.int64, count=int(offsets[-1]))
    return _pack_arrays(flat, offsets, seq_len)


def _pack_arrays(flat: np.ndarray, offsets: np.ndarray, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`pack_sequences` on the concatenated tokens ``flat`` with document boundaries ``offsets``."""
    check_int("seq_len", seq_len, minimum=2)
    stream = np.insert(flat.astype(np.int64), offsets[1:], SEP_ID)  # a [SEP] after every document
    body = seq_len - 1
    num = -(-len(stream) // body)
    padded = np.full(num * body, PAD_ID, dtype=np.int64)
    padded[:len(stream)] = stream
    ids = np.concatenate([np.full((num, 1), CLS_ID, dtype=np.int64), padded.reshape(num, body)], axis=1)
    mask = np.ones_like(ids, dtype=bool)
    mask[:, 1:] = (np.arange(num * body) < len(stream)).reshape(num, body)
    return torch.from_numpy(ids), torch.from_numpy(mask)


class _TextTask(Task):
    """Common corpus / tokenizer plumbing of the text tasks."""

    def _setup_text(self, corpus, vocab_size, seq_len, small, max_files_per_package, cache_dir, corpus_options):
        check_int("seq_len", seq_len, minimum=4)
        check_int("vocab_size", vocab_size, minimum=len(SPECIAL_TOKENS) + 1)
        if not isinstance(small, bool):
            raise ValueError(f"small must be True or False, got {small!r}")
        if small and corpus == "builtin" and max_files_per_package is None:
            max_files_per_package = SMALL_PRESET["max_files_per_package"]
        if max_files_per_package is not None:
            corpus_options["max_files_per_package"] = max_files_per_package
        if (small and isinstance(corpus, str) and corpus.split(":")[0] == "english"
                and corpus_options.get("max_documents") is None):
            corpus_options["max_documents"] = SMALL_PRESET["max_documents"]
        self.seq_len, self.vocab_size = seq_len, vocab_size
        self.small = small
        self.cache_dir = Path(cache_dir or default_cache_dir())
        self.corpus = load_corpus(corpus, cache_dir=self.cache_dir, **corpus_options)
        return max_files_per_package

    def _describe_tokenizer(self, tokenizer) -> dict:
        return {"tokenizer": TOKENIZER_RECIPE, "tokenizer_vocab_size": tokenizer.get_vocab_size(),
                "tokenizer_sha256": tokenizer_sha256(tokenizer), "special_tokens": list(SPECIAL_TOKENS)}


@register_task("mlm")
class MaskedLanguageModeling(_TextTask):
    """Masked language modelling on packed text (BERT's objective, Devlin et al. 2019).

    Options: ``corpus`` ("builtin" | path(s) to .txt/.jsonl | "hf:<name>[:<config>]"), ``seq_len``,
    ``vocab_size`` (WordPiece size; the model's embedding has this many rows, the tokenizer may use
    fewer), ``mask_prob`` (0.15), ``num_eval_sequences`` (a fixed random subset of the packed
    validation sequences; None = all), ``eval_seed`` (masking of the validation set), ``small``
    (smoke preset: ``max_files_per_package=60`` for the built-in corpus, ``max_documents=3000`` for the
    english one, and at most 128 eval sequences unless given),
    ``max_files_per_package`` / ``max_documents`` / ``text_field`` / ``hf_split`` (corpus options),
    ``cache_dir``.

    Training batch ``step`` = a fixed per-epoch permutation of the packed training sequences
    (:func:`~ablations.tasks.base.epoch_indices`) masked with a generator seeded by ``(seed, step)``.
    Metrics on the held-out split (by source, see module docstring): masked-token cross-entropy
    ``loss``, ``perplexity`` = exp(loss), and ``accuracy``. Primary metric: ``accuracy`` (higher is
    better): it is bounded and comparable across vocabulary sizes, and the loss is reported beside it.
    """

    kind = "token"
    primary_metric = "accuracy"
    higher_is_better = True

    def __init__(self, corpus="builtin", seq_len: int = 128, vocab_size: int = 8192, mask_prob: float = 0.15,
                 num_eval_sequences: int | None = None, eval_seed: int = 1234, small: bool = False,
                 max_files_per_package: int | None = None, max_documents: int | None = None,
                 text_field: str = "text", hf_split: str = "train", cache_dir: str | None = None):
        if not (isinstance(mask_prob, (int, float)) and 0 < mask_prob < 1):
            raise ValueError(f"mask_prob must be in (0, 1), got {mask_prob!r}")
        check_int("eval_seed", eval_seed)
        corpus_options = {"text_field": text_field, "hf_split": hf_split}
        if max_documents is not None:
            corpus_options["max_documents"] = max_documents
        self._setup_text(corpus, vocab_size, seq_len, small, max_files_per_package, cache_dir, corpus_options)
        from_preset = small and num_eval_sequences is None
        if from_preset:
            num_eval_sequences = SMALL_PRESET["num_eval_sequences"]
        if num_eval_sequences is not None:
            check_int("num_eval_sequences", num_eval_sequences, minimum=1)
        self.num_labels = vocab_size
        self.mask_prob, self.eval_seed, self.num_eval_sequences = float(mask_prob), eval_seed, num_eval_sequences
        self.tokenizer = get_tokenizer(vocab_size, self.corpus, cache_dir=self.cache_dir)
        self._tok_vocab = self.tokenizer.get_vocab_size()
        self._data = {split: _pack_arrays(*self._token_arrays(split), seq_len) for split in ("train", "val")}
        for split, (ids, _) in self._data.items():
            if len(ids) == 0:
                raise ValueError(f"corpus {self.corpus.spec.get('corpus')!r} has no {split} documents "
                                 f"(the split is by source; give more files/documents)")
        available = len(self._data["val"][0])
        if from_preset:  # the preset is an upper bound; an explicit value must be available
            num_eval_sequences = self.num_eval_sequences = min(num_eval_sequences, available)
        if num_eval_sequences is not None and num_eval_sequences > available:
            raise ValueError(f"num_eval_sequences={num_eval_sequences} exceeds the {available} validation "
                             f"sequences of this corpus at seq_len={seq_len}")
        self._eval = None

    def _token_arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Token ids of the split's documents, concatenated (``flat``) with boundaries (``offsets``),
        cached on disk per (corpus, tokenizer)."""
        key = f"{self.corpus.split_sha256[:20]}-{tokenizer_sha256(self.tokenizer)[:20]}-{split}"
        path = self.cache_dir / "tokens" / f"{key}.npz"
        if path.exists():
            with np.load(path) as z:
                return z["flat"], z["offsets"]
        lists = _encode_texts(self.tokenizer, [d.text for d in self.corpus.split(split)], f"tokenize {split}")
        offsets = np.cumsum([0] + [len(x) for x in lists]).astype(np.int64)
        flat = np.fromiter((t for x in lists for t in x), dtype=np.int32, count=int(offsets[-1]))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
        os.close(fd)
        np.savez(tmp, flat=flat, offsets=offsets)
        os.replace(tmp, path)
        return flat, offsets

    def _mask(self, ids, attention, gen):
        return mask_tokens(ids, attention, gen, self._tok_vocab, self.mask_prob)

    def train_batch(self, step: int, batch_size: int, seed: int) -> dict[str, torch.Tensor]:
        ids, attention = self._data["train"]
        idx = epoch_indices(len(ids), step, batch_size, int(seed), salt="mlm")
        masked, labels = self._mask(ids[idx], attention[idx], generator_for("mlm", "mask", int(seed), step))
        return {"input_ids": masked, "attention_mask": attention[idx], "labels": labels}

    def _eval_set(self):
        if self._eval is None:
            ids, attention = self._data["val"]
            gen = generator_for("mlm", "eval", self.eval_seed)
            if self.num_eval_sequences is not None:
                keep = torch.randperm(len(ids), generator=gen)[:self.num_eval_sequences].sort().values
                ids, attention = ids[keep], attention[keep]
            masked, labels = self._mask(ids, attention, gen)
            self._eval = (masked, attention, labels)
        return self._eval

    def eval_batches(self, split: str, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        self.split_seq_len(split)
        check_int("batch_size", batch_size, minimum=1)
        masked, attention, labels = self._eval_set()
        for s in range(0, len(masked), batch_size):
            yield {"input_ids": masked[s:s + batch_size], "attention_mask": attention[s:s + batch_size],
                   "labels": labels[s:s + batch_size]}

    def token_metrics(self, loss: float, accuracy: float) -> dict[str, float]:
        return {"loss": loss, "perplexity": float(np.exp(min(loss, 700.0))), "accuracy": accuracy}

    def describe(self) -> dict:
        tokens = {s: int(self._data[s][1].sum()) for s in self._data}
        return {**super().describe(), "corpus": self.corpus.describe(), **self._describe_tokenizer(self.tokenizer),
                "mask_prob": self.mask_prob, "masking": "80% [MASK] / 10% random / 10% unchanged",
                "sequences": {s: len(self._data[s][0]) for s in self._data}, "tokens": tokens,
                "num_eval_sequences": self.num_eval_sequences, "eval_seed": self.eval_seed, "small": self.small}
