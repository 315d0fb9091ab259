"""The offline downstream task ``docstring_package``: which package a docstring of the built-in corpus
comes from."""
from __future__ import annotations

import hashlib
import os
import tempfile
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .base import check_int, generator_for, register_task
from .corpus import PACKAGES, Document
from .mlm import SMALL_PRESET, _TextTask
from .tokenizer import CLS_ID, PAD_ID, SEP_ID, _encode_texts, get_tokenizer, tokenizer_sha256


@register_task("docstring_package")
class DocstringPackage(_TextTask):
    """Which package does a docstring come from? 5-way classification (``PACKAGES`` order:
    stdlib, numpy, scipy, pandas, torch) on the built-in corpus, the offline stand-in for GLUE in the
    pretrain-then-fine-tune protocol (fine-tune from the ``mlm`` checkpoint with the same tokenizer:
    same ``vocab_size``, ``tokenizer_corpus`` and ``max_files_per_package``; ``describe()`` records
    ``tokenizer_sha256`` so the pairing can be checked).

    Examples: docstrings with at least ``min_words`` words, ``[CLS] text [SEP]`` cut to ``seq_len``
    (the fraction cut is in ``describe()``) and padded. Texts that occur in several packages are
    dropped (ambiguous label); a text repeated within one package is kept once, so no text is in both
    splits. The split is the corpus's split by source file, as for ``mlm``.

    Class balance: the classes are very unequal (torch has several times numpy's docstrings), so
    training batches draw the class uniformly, then an example of it uniformly (a pure function of
    ``(seed, step)``), and the validation set keeps the same number of examples of each class (the
    smallest class's count, capped by ``max_val_per_class``; a fixed random subset by ``eval_seed``).
    Accuracy is therefore balanced (chance 0.2). Metrics: ``accuracy`` (primary), ``macro_f1``, ``loss``.
    """

    kind = "sequence"
    primary_metric = "accuracy"
    higher_is_better = True

    def __init__(self, seq_len: int = 128, vocab_size: int = 8192, tokenizer_corpus="builtin", min_words: int = 8,
                 max_val_per_class: int | None = None, eval_seed: int = 1234, small: bool = False,
                 max_files_per_package: int | None = None, cache_dir: str | None = None):
        check_int("min_words", min_words, minimum=1)
        check_int("eval_seed", eval_seed)
        files = self._setup_text("builtin", vocab_size, seq_len, small, max_files_per_package, cache_dir, {})
        if small and max_val_per_class is None:
            max_val_per_class = SMALL_PRESET["max_val_per_class"]
        if max_val_per_class is not None:
            check_int("max_val_per_class", max_val_per_class, minimum=1)
        self.num_labels = len(PACKAGES)
        self.label_names = list(PACKAGES)
        self.min_words, self.eval_seed, self.max_val_per_class = min_words, eval_seed, max_val_per_class
        tok_options = {"max_files_per_package": files} if tokenizer_corpus == "builtin" and files else {}
        self.tokenizer_corpus = tokenizer_corpus
        self.tokenizer = get_tokenizer(vocab_size, tokenizer_corpus, cache_dir=self.cache_dir, **tok_options)
        if self.tokenizer.get_vocab_size() > vocab_size:
            raise ValueError(f"the tokenizer of tokenizer_corpus={tokenizer_corpus!r} has "
                             f"{self.tokenizer.get_vocab_size()} tokens, more than vocab_size={vocab_size}")
        self._truncated, self._data = self._load_examples()
        self._by_class = []
        for c, package in enumerate(PACKAGES):
            for split in ("train", "val"):
                if not bool((self._data[split][2] == c).any()):
                    raise ValueError(f"class {package!r} has no {split} examples (min_words={min_words}, "
                                     f"max_files_per_package={files}); use more files or a smaller min_words")
            self._by_class.append(torch.nonzero(self._data["train"][2] == c).flatten())
        self._val_index = self._balanced_val()

    def examples(self) -> list[Document]:
        """The labelled documents after the ``min_words`` filter and de-duplication (corpus order)."""
        groups: dict[str, list[Document]] = {}
        for doc in self.corpus.documents:
            if len(doc.text.split()) >= self.min_words:
                groups.setdefault(" ".join(doc.text.lower().split()), []).append(doc)
        keep = {id(g[0]) for g in groups.values() if len({d.package for d in g}) == 1}
        return [d for d in self.corpus.documents if id(d) in keep]

    def _load_examples(self):
        """``(truncated count, {split: (ids, attention, labels)})``, cached on disk per (corpus,
        tokenizer, seq_len, min_words) since encoding every docstring takes seconds."""
        key = hashlib.sha256(f"{self.corpus.split_sha256}-{tokenizer_sha256(self.tokenizer)}-{self.seq_len}-"
                             f"{self.min_words}".encode()).hexdigest()[:24]
        path = self.cache_dir / "docstring_package" / f"{key}.npz"
        if path.exists():
            with np.load(path) as z:
                data = {s: (torch.from_numpy(z[f"{s}_ids"].astype(np.int64)),) for s in ("train", "val")}
                data = {s: (v[0], v[0] != PAD_ID, torch.from_numpy(z[f"{s}_labels"].astype(np.int64)))
                        for s, v in data.items()}
                return int(z["truncated"]), data
        examples = self.examples()
        truncated_total, data = 0, {}
        for split in ("train", "val"):
            docs = [d for d in examples if self.corpus.split_of_source(d.source) == split]
            ids, attention, truncated = self._encode([d.text for d in docs])
            truncated_total += truncated
            labels = torch.tensor([PACKAGES.index(d.package) for d in docs], dtype=torch.long)
            data[split] = (ids, attention, labels)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
        os.close(fd)
        np.savez(tmp, truncated=truncated_total, **{f"{s}_ids": v[0].numpy().astype(np.int32) for s, v in data.items()},
                 **{f"{s}_labels": v[2].numpy().astype(np.int8) for s, v in data.items()})
        os.replace(tmp, path)
        return truncated_total, data

    def _encode(self, texts: list[str]):
        body = self.seq_len - 2
        # Every whitespace-separated word gives at least one token and words are tokenized
        # independently, so the first `body` words hold the first `body` tokens: encoding only them
        # gives the same prefix much faster (long docstrings are cut anyway).
        words = [t.split(maxsplit=body) for t in texts]
        lists = _encode_texts(self.tokenizer, [" ".join(w[:body]) for w in words], "tokenize docstrings")
        ids = torch.full((len(lists), self.seq_len), PAD_ID, dtype=torch.long)
        truncated = 0
        for i, tokens in enumerate(lists):
            truncated += len(tokens) > body or len(words[i]) > body
            row = [CLS_ID, *tokens[:body], SEP_ID]
            ids[i, :len(row)] = torch.tensor(row)
        return ids, ids != PAD_ID, truncated

    def _balanced_val(self) -> torch.Tensor:
        labels = self._data["val"][2]
        per_class = min(int((labels == c).sum()) for c in range(self.num_labels))
        if self.max_val_per_class is not None:
            per_class = min(per_class, self.max_val_per_class)
        gen = generator_for("docstring_package", "eval", self.eval_seed)
        chosen = []
        for c in range(self.num_labels):
            members = torch.nonzero(labels == c).flatten()
            chosen.append(members[torch.randperm(len(members), generator=gen)[:per_class]])
        return torch.cat(chosen).sort().values

    def train_batch(self, step: int, batch_size: int, seed: int) -> dict[str, torch.Tensor]:
        check_int("step", step, minimum=0)
        check_int("batch_size", batch_size, minimum=1)
        gen = generator_for("docstring_package", "train", int(seed), step)
        classes = torch.randint(self.num_labels, (batch_size,), generator=gen)
        within = torch.rand(batch_size, generator=gen)
        sizes = torch.tensor([len(m) for m in self._by_class])
        pick = (within * sizes[classes]).long().clamp(max=sizes[classes] - 1)
        idx = torch.stack([self._by_class[c][p] for c, p in zip(classes.tolist(), pick.tolist())])
        ids, attention, labels = self._data["train"]
        return {"input_ids": ids[idx], "attention_mask": attention[idx], "labels": labels[idx]}

    def eval_batches(self, split: str, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        self.split_seq_len(split)
        check_int("batch_size", batch_size, minimum=1)
        ids, attention, labels = self._data["val"]
        for s in range(0, len(self._val_index), batch_size):
            idx = self._val_index[s:s + batch_size]
            yield {"input_ids": ids[idx], "attention_mask": attention[idx], "labels": labels[idx]}

    def compute_metrics(self, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        pred = logits.argmax(-1)
        f1s = []
        for c in range(self.num_labels):
            tp = int(((pred == c) & (labels == c)).sum())
            denom = int((pred == c).sum()) + int((labels == c).sum())
            f1s.append(2 * tp / denom if denom else 0.0)
        return {"loss": float(F.cross_entropy(logits.float(), labels)),
                "accuracy": float((pred == labels).float().mean()), "macro_f1": float(np.mean(f1s))}

    def describe(self) -> dict:
        counts = {s: {p: int((self._data[s][2] == c).sum()) for c, p in enumerate(PACKAGES)} for s in self._data}
        return {**super().describe(), "corpus": self.corpus.describe(), **self._describe_tokenizer(self.tokenizer),
                "tokenizer_corpus": str(self.tokenizer_corpus), "labels": list(PACKAGES), "min_words": self.min_words,
                "examples_per_class": counts, "val_per_class": len(self._val_index) // self.num_labels,
                "balance": "uniform class sampling in training; equal class counts in validation",
                "truncated_fraction": self._truncated / max(1, sum(len(v[0]) for v in self._data.values())),
                "eval_seed": self.eval_seed, "small": self.small}
