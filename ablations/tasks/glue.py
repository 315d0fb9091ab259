"""GLUE fine-tuning tasks (Wang et al., "GLUE: A Multi-Task Benchmark and Analysis Platform for
Natural Language Understanding", ICLR 2019) with the official metrics.

Data: ``data_dir`` holding the official GLUE TSV layout, either the task folder itself (``train.tsv``,
``dev.tsv``; MNLI: ``dev_matched.tsv`` and optionally ``dev_mismatched.tsv``) or the GLUE root with
the official folder names (``CoLA``, ``SST-2``, ``MRPC``, ``QQP``, ``STS-B``, ``MNLI``, ``QNLI``,
``RTE``), or a ``DatasetDict.save_to_disk`` directory; without ``data_dir``, Hugging Face
``datasets.load_dataset(hf_dataset, glue_task)`` (works wherever the hub is reachable or cached).
Labels use the Hugging Face ``glue`` ids in both cases (e.g. MNLI entailment=0, neutral=1,
contradiction=2; QNLI/RTE entailment=0, not_entailment=1). TSV rows are split on tabs with no quote
handling (GLUE's sentences contain unbalanced quotes); a row with too few fields or an unknown label
raises ``ValueError`` naming file and line.

Inputs: ``[CLS] sentence1 [SEP] (sentence2 [SEP])`` with the shared WordPiece tokenizer of
:func:`ablations.tasks.tokenizer.get_tokenizer` (pairs truncated longest-first to ``seq_len``; the truncated
fraction is in ``describe()``), padded to ``seq_len``.

Metrics (fractions, not percentages; official GLUE metrics per task):

=======  ======================================  =======================================
task     metrics                                 computed with
=======  ======================================  =======================================
cola     Matthews correlation                    ``sklearn.metrics.matthews_corrcoef``
sst2     accuracy                                numpy
mrpc     accuracy, F1 (positive class 1)         numpy, ``sklearn.metrics.f1_score``
qqp      accuracy, F1 (positive class 1)         numpy, ``sklearn.metrics.f1_score``
stsb     Pearson, Spearman (regression)          ``scipy.stats.pearsonr`` / ``spearmanr``
mnli     accuracy (``val`` = matched, ``val_mm`` = mismatched)
qnli     accuracy
rte      accuracy
=======  ======================================  =======================================

``score`` (the primary metric) is the mean of a task's official metrics (the GLUE convention for
tasks with two metrics). The GLUE average (:func:`glue_average`) is the unweighted mean of the task
scores over the tasks present, as in the GLUE paper and Hydra's Table 2 (8 tasks, WNLI excluded;
MNLI counted once, by its matched accuracy); multiply by 100 for the paper's numbers.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from .base import DataUnavailableError, HeldSequences, check_choice, check_int, generator_for, register_task
from .corpus import default_cache_dir
from .mlm import SMALL_PRESET
from .tokenizer import PAD_ID, get_tokenizer, tokenizer_sha256


@dataclasses.dataclass(frozen=True)
class GlueSpec:
    """How one GLUE task is stored and scored.

    ``tsv_text``/``tsv_label``: header names (or column indices when ``tsv_header`` is False) in the
    official TSV files; ``hf_text``: the Hugging Face columns; ``label_ids``: TSV label string -> id
    (empty for regression); ``dev_files``: eval split -> TSV file (the first one is required).
    """

    folder: str
    metrics: tuple[str, ...]
    tsv_text: tuple
    tsv_label: object
    hf_text: tuple[str, ...]
    label_ids: Mapping[str, int]
    tsv_header: bool = True
    dev_files: Mapping[str, str] = dataclasses.field(default_factory=lambda: {"val": "dev.tsv"})
    hf_splits: Mapping[str, str] = dataclasses.field(default_factory=lambda: {"val": "validation"})

    @property
    def num_labels(self) -> int:
        return len(set(self.label_ids.values())) or 1


_BINARY = {"0": 0, "1": 1}
_NLI2 = {"entailment": 0, "not_entailment": 1}
GLUE_TASKS: dict[str, GlueSpec] = {
    "cola": GlueSpec("CoLA", ("matthews",), (3,), 1, ("sentence",), _BINARY, tsv_header=False),
    "sst2": GlueSpec("SST-2", ("accuracy",), ("sentence",), "label", ("sentence",), _BINARY),
    "mrpc": GlueSpec("MRPC", ("accuracy", "f1"), ("#1 String", "#2 String"), "Quality",
                     ("sentence1", "sentence2"), _BINARY),
    "qqp": GlueSpec("QQP", ("accuracy", "f1"), ("question1", "question2"), "is_duplicate",
                    ("question1", "question2"), _BINARY),
    "stsb": GlueSpec("STS-B", ("pearson", "spearman"), ("sentence1", "sentence2"), "score",
                     ("sentence1", "sentence2"), {}),
    "mnli": GlueSpec("MNLI", ("accuracy",), ("sentence1", "sentence2"), "gold_label", ("premise", "hypothesis"),
                     {"entailment": 0, "neutral": 1, "contradiction": 2},
                     dev_files={"val": "dev_matched.tsv", "val_mm": "dev_mismatched.tsv"},
                     hf_splits={"val": "validation_matched", "val_mm": "validation_mismatched"}),
    "qnli": GlueSpec("QNLI", ("accuracy",), ("question", "sentence"), "label", ("question", "sentence"), _NLI2),
    "rte": GlueSpec("RTE", ("accuracy",), ("sentence1", "sentence2"), "label", ("sentence1", "sentence2"), _NLI2),
}

METRIC_BACKENDS = {"accuracy": "numpy", "f1": "sklearn.metrics.f1_score",
                   "matthews": "sklearn.metrics.matthews_corrcoef", "pearson": "scipy.stats.pearsonr",
                   "spearman": "scipy.stats.spearmanr"}


def glue_metrics(glue_task: str, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The official metrics of ``glue_task`` plus ``score`` (their mean).

    ``predictions``/``labels``: ``(n,)`` class ids, or floats for ``stsb``. Backends in ``METRIC_BACKENDS``.
    """
    spec = GLUE_TASKS[check_choice("glue_task", glue_task, tuple(GLUE_TASKS))]
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.shape != labels.shape or predictions.ndim != 1 or len(labels) == 0:
        raise ValueError(f"predictions and labels must be equal non-empty 1-D arrays, got shapes "
                         f"{predictions.shape} and {labels.shape}")
    out = {}
    for metric in spec.metrics:
        if metric == "accuracy":
            out[metric] = float(np.mean(predictions == labels))
        elif metric == "f1":
            from sklearn.metrics import f1_score
            out[metric] = float(f1_score(labels, predictions, pos_label=1, zero_division=0.0))
        elif metric == "matthews":
            from sklearn.metrics import matthews_corrcoef
            out[metric] = float(matthews_corrcoef(labels, predictions))
        else:
            from scipy import stats
            # a constant prediction has no correlation; scipy warns and returns nan, which we keep
            fn = stats.pearsonr if metric == "pearson" else stats.spearmanr
            out[metric] = float(fn(predictions, labels)[0]) if np.ptp(predictions) > 0 else float("nan")
    out["score"] = float(np.mean([out[m] for m in spec.metrics]))
    return out


def glue_average(scores: Mapping[str, float]) -> float:
    """The GLUE average: unweighted mean of per-task ``score`` values (``{glue_task: score}``).
    Raises ValueError on unknown task names or an empty mapping."""
    if not scores:
        raise ValueError("scores must hold at least one GLUE task score")
    for name in scores:
        check_choice("glue task", name, tuple(GLUE_TASKS))
    return float(np.mean(list(scores.values())))


def _read_tsv(path: Path, spec: GlueSpec, glue_task: str) -> tuple[list[tuple[str, ...]], list[float]]:
    lines = path.read_text(encoding="utf-8").split("\n")
    rows = [(i + 1, line.rstrip("\r").split("\t")) for i, line in enumerate(lines) if line.strip()]
    if spec.tsv_header:
        if not rows:
            raise ValueError(f"{path}: empty file (expected a header line)")
        header = rows.pop(0)[1]
        missing = [c for c in (*spec.tsv_text, spec.tsv_label) if c not in header]
        if missing:
            raise ValueError(f"{path}: header lacks column(s) {missing} needed for glue_task={glue_task!r}; "
                             f"header: {header}")
        text_cols = [header.index(c) for c in spec.tsv_text]
        label_col = header.index(spec.tsv_label)
    else:
        text_cols, label_col = list(spec.tsv_text), spec.tsv_label
    need = max(*text_cols, label_col) + 1
    texts, labels = [], []
    for lineno, fields in rows:
        if len(fields) < need:
            raise ValueError(f"{path}:{lineno}: {len(fields)} tab-separated fields, glue_task={glue_task!r} "
                             f"needs at least {need}")
        raw = fields[label_col].strip()
        if spec.label_ids:
            if raw not in spec.label_ids:
                raise ValueError(f"{path}:{lineno}: label {raw!r} is not one of {sorted(spec.label_ids)}")
            labels.append(spec.label_ids[raw])
        else:
            try:
                labels.append(float(raw))
            except ValueError:
                raise ValueError(f"{path}:{lineno}: score {raw!r} is not a number") from None
        texts.append(tuple(fields[c] for c in text_cols))
    return texts, labels


def _from_hf_split(ds, spec: GlueSpec, where: str) -> tuple[list[tuple[str, ...]], list[float]]:
    missing = [c for c in (*spec.hf_text, "label") if c not in ds.column_names]
    if missing:
        raise ValueError(f"{where}: missing column(s) {missing}; columns: {ds.column_names}")
    columns = [ds[c] for c in spec.hf_text]
    return list(zip(*columns)), list(ds["label"])


@register_task("glue")
class Glue(HeldSequences):
    """One GLUE task (module docstring): ``glue_task`` in cola|sst2|mrpc|qqp|stsb|mnli|qnli|rte.

    Options: ``data_dir`` (TSV layout or ``save_to_disk`` directory; None = Hugging Face hub via
    ``hf_dataset``), ``seq_len``, ``vocab_size`` / ``tokenizer_corpus`` / ``max_files_per_package``
    (which shared tokenizer: use the pretraining task's values), ``max_train_examples`` /
    ``max_eval_examples`` (a fixed random subset, for smoke runs), ``small`` (the smoke preset of the
    text tasks for the tokenizer corpus), ``cache_dir``. Eval splits: ``val`` (GLUE dev; MNLI
    matched) and, for MNLI when available, ``val_mm``. Primary metric ``score``; regression for
    ``stsb`` (``num_labels = 1``, float labels, MSE loss).
    """

    kind = "sequence"
    primary_metric = "score"
    higher_is_better = True

    def __init__(self, glue_task: str, data_dir: str | None = None, seq_len: int = 128, vocab_size: int = 8192,
                 tokenizer_corpus="builtin", max_files_per_package: int | None = None,
                 max_train_examples: int | None = None, max_eval_examples: int | None = None,
                 small: bool = False, hf_dataset: str = "nyu-mll/glue", cache_dir: str | None = None):
        self.glue_task = check_choice("glue_task", glue_task, tuple(GLUE_TASKS))
        self.spec = spec = GLUE_TASKS[glue_task]
        check_int("seq_len", seq_len, minimum=4)
        for opt, val in (("max_train_examples", max_train_examples), ("max_eval_examples", max_eval_examples)):
            if val is not None:
                check_int(opt, val, minimum=1)
        if not isinstance(small, bool):
            raise ValueError(f"small must be True or False, got {small!r}")
        if small and tokenizer_corpus == "builtin" and max_files_per_package is None:
            max_files_per_package = SMALL_PRESET["max_files_per_package"]
        try:
            import sklearn.metrics  # noqa: F401  (the official metrics need it; fail before any training)
        except ImportError as e:
            raise DataUnavailableError("the glue task needs scikit-learn (pip install 'mixerzoo[glue]')") from e
        self.seq_len, self.vocab_size, self.num_labels = seq_len, vocab_size, spec.num_labels
        self.data_dir, self.hf_dataset, self.small = data_dir, hf_dataset, small
        self.cache_dir = Path(cache_dir or default_cache_dir())
        tok_options = {"max_files_per_package": max_files_per_package} if max_files_per_package is not None else {}
        self.tokenizer_corpus = tokenizer_corpus
        self.tokenizer = get_tokenizer(vocab_size, tokenizer_corpus, cache_dir=self.cache_dir, **tok_options)
        self.tokenizer_sha256 = tokenizer_sha256(self.tokenizer)  # before truncation changes its JSON
        self.tokenizer.enable_truncation(max_length=seq_len, strategy="longest_first")

        raw, self.source = self._load()
        self.eval_splits = tuple(s for s in spec.dev_files if s in raw)
        limits = {"train": max_train_examples, **{s: max_eval_examples for s in self.eval_splits}}
        self._data, self._sizes, truncated, total = {}, {}, 0, 0
        for split, (texts, labels) in raw.items():
            self._sizes[split] = len(texts)
            keep = np.arange(len(texts))
            if limits[split] is not None and limits[split] < len(texts):
                gen = generator_for("glue", glue_task, "subset", split)
                keep = np.sort(torch.randperm(len(texts), generator=gen)[:limits[split]].numpy())
            encodings = self.tokenizer.encode_batch([texts[i] if len(texts[i]) > 1 else texts[i][0] for i in keep])
            ids = torch.full((len(keep), seq_len), PAD_ID, dtype=torch.long)
            for row, enc in enumerate(encodings):
                ids[row, :len(enc.ids)] = torch.tensor(enc.ids)
                truncated += bool(enc.overflowing)
            total += len(keep)
            dtype = torch.float32 if self.num_labels == 1 else torch.long
            self._data[split] = (ids, ids != PAD_ID, torch.tensor([labels[i] for i in keep], dtype=dtype))
        self._truncated_fraction = truncated / max(total, 1)
        self.max_train_examples, self.max_eval_examples = max_train_examples, max_eval_examples

    # -------------------------------------------------------------------------------- loading
    def _load(self) -> tuple[dict, str]:
        spec, task = self.spec, self.glue_task
        if self.data_dir is not None:
            root = Path(self.data_dir)
            for folder in (root, root / spec.folder):
                if (folder / "train.tsv").is_file():
                    return self._load_tsv(folder), f"tsv:{folder}"
            if (root / "dataset_dict.json").is_file():
                try:
                    import datasets
                except ImportError as e:
                    raise DataUnavailableError(f"data_dir {str(root)!r} is a saved dataset; install 'datasets'") from e
                return self._load_hf(datasets.load_from_disk(str(root)), str(root)), f"load_from_disk:{root}"
            raise DataUnavailableError(
                f"data_dir {str(root)!r} holds neither {spec.folder}/train.tsv, train.tsv nor a saved "
                f"DatasetDict (dataset_dict.json) for glue_task={task!r}")
        try:
            import datasets
        except ImportError as e:
            raise DataUnavailableError("glue without data_dir needs the 'datasets' package") from e
        try:
            dsd = datasets.load_dataset(self.hf_dataset, task)
        except (OSError, datasets.exceptions.DatasetNotFoundError) as e:
            raise DataUnavailableError(f"cannot load {self.hf_dataset}/{task} from Hugging Face: {e}") from e
        return self._load_hf(dsd, f"{self.hf_dataset}/{task}"), f"hf:{self.hf_dataset}/{task}"

    def _load_tsv(self, folder: Path) -> dict:
        raw = {"train": _read_tsv(folder / "train.tsv", self.spec, self.glue_task)}
        for i, (split, fname) in enumerate(self.spec.dev_files.items()):
            path = folder / fname
            if path.is_file():
                raw[split] = _read_tsv(path, self.spec, self.glue_task)
            elif i == 0:
                raise DataUnavailableError(f"{folder} has train.tsv but no {fname} for glue_task={self.glue_task!r}")
        return raw

    def _load_hf(self, dsd, where: str) -> dict:
        raw = {"train": _from_hf_split(dsd["train"], self.spec, f"{where}[train]")} if "train" in dsd else None
        if raw is None:
            raise ValueError(f"{where}: no 'train' split; splits: {list(dsd)}")
        for i, (split, hf_name) in enumerate(self.spec.hf_splits.items()):
            if hf_name in dsd:
                raw[split] = _from_hf_split(dsd[hf_name], self.spec, f"{where}[{hf_name}]")
            elif i == 0:
                raise ValueError(f"{where}: no {hf_name!r} split; splits: {list(dsd)}")
        return raw

    # -------------------------------------------------------------------------------- batches
    @property
    def batch_salt(self) -> str:
        return f"glue-{self.glue_task}"

    def compute_metrics(self, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        if self.num_labels == 1:
            pred = logits.float().reshape(-1)
            loss = float(F.mse_loss(pred, labels.float()))
        else:
            pred = logits.argmax(-1)
            loss = float(F.cross_entropy(logits.float(), labels))
        return {"loss": loss, **glue_metrics(self.glue_task, pred.numpy(), labels.numpy())}

    def describe(self) -> dict:
        return {**super().describe(), "glue_task": self.glue_task, "source": self.source,
                "examples": {s: len(v[0]) for s, v in self._data.items()}, "available_examples": self._sizes,
                "max_train_examples": self.max_train_examples, "max_eval_examples": self.max_eval_examples,
                "metrics": list(self.spec.metrics),
                "metric_backends": {m: METRIC_BACKENDS[m] for m in self.spec.metrics},
                "score": "mean of the task's official metrics; GLUE average = unweighted mean over tasks",
                "tokenizer_corpus": str(self.tokenizer_corpus), "tokenizer_sha256": self.tokenizer_sha256,
                "truncated_fraction": self._truncated_fraction, "small": self.small}
