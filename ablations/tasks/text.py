"""Text tasks: corpora, the shared WordPiece tokenizer, masked language modelling (``mlm``) and the
offline downstream task ``docstring_package``.

Corpora (:func:`load_corpus`)
-----------------------------
``"builtin"``
    English text present wherever the project is installed: the docstrings of the Python standard
    library and of numpy, scipy, pandas and torch, plus the ``pydoc_data.topics`` reference-manual
    sections. Docstrings are read from the source files with :mod:`ast` (nothing is imported, so no
    module side effects), including the strings passed to the documentation-attaching functions
    ``add_docstr`` / ``_add_docstr`` / ``add_newdoc`` (torch and numpy document their C functions this
    way). Doctest blocks (``>>>`` lines and their output) are removed, so the text is prose. Test
    packages, ``idlelib``, ``tkinter``, ``turtledemo``, ``__main__``, ``antigravity``, ``this`` and
    ``site-packages`` are skipped. Files are walked in sorted order, so the corpus is a deterministic
    function of the installed versions; its SHA-256 is in :meth:`Corpus.describe`. The extracted corpus
    is cached on disk (gzipped JSONL) keyed by the Python and package versions.
local files
    ``.txt`` (documents = paragraphs separated by blank lines) and ``.jsonl`` (one JSON object per
    line with a string field ``text_field``, default ``"text"``); a directory means every such file in it.
``"hf:<name>[:<config>]"``
    a Hugging Face dataset via ``datasets`` (``hf_split``, ``text_field``; ``max_documents`` streams
    only that many). ``<name>`` may also be a directory written by ``Dataset.save_to_disk``.

Splits. Every document has a *source*; the validation split is the set of sources whose SHA-256
falls in the first ``VAL_FRACTION`` of the hash range, so a split never shares a source (if that
leaves a split empty, the source with the smallest / largest hash changes side). Built-in:
the source is the file (each ``pydoc_data`` topic is its own source); external corpora: a shard of
``SHARD_SIZE`` consecutive documents of one file (neighbouring paragraphs stay together), named by
the file's name (or its path inside a given directory) so that the split does not depend on where
the files are stored.

Tokenizer (:func:`get_tokenizer`): a ``tokenizers`` WordPiece tokenizer (Schuster & Nakajima 2012;
Devlin et al. 2019, BERT) with the BERT normalizer (lower-casing, accent stripping) and pre-tokenizer,
special tokens ``[PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4``, and the post-processor
``[CLS] A [SEP] (B [SEP])``. Its vocabulary is learned offline on the train split by
:func:`wordpiece_vocabulary` (the library trainer's BPE rule, made deterministic: the library's own
trainer gives a different vocabulary in every process), so the tokenizer, like the corpus, is a
deterministic function of the texts and package versions. Cached under ``$MIXERZOO_CACHE`` (default
``~/.cache/mixerzoo``) keyed by corpus hash (with its split) and vocabulary size.
"""
from __future__ import annotations

import ast
import dataclasses
import gzip
import hashlib
import importlib.metadata
import importlib.util
import inspect
import json
import os
import re
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .base import (IGNORE_INDEX, DataUnavailableError, Task, check_int, epoch_indices, generator_for,
                   register_task)

PACKAGES = ("stdlib", "numpy", "scipy", "pandas", "torch")
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = range(len(SPECIAL_TOKENS))
VAL_FRACTION = 0.1
SHARD_SIZE = 64
# bump when extraction or tokenizer training changes, so caches are rebuilt
CORPUS_RECIPE = "builtin-docstrings-v1"
TOKENIZER_RECIPE = "wordpiece-bert-v2"

_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idlelib", "tkinter", "turtledemo",
                        "__pycache__", "pydoc_data"})
_SKIP_FILES = frozenset({"__main__.py", "antigravity.py", "this.py", "conftest.py"})
_DOC_CALLS = frozenset({"add_docstr", "_add_docstr", "add_newdoc"})
SMALL_PRESET = {"max_files_per_package": 60, "num_eval_sequences": 128, "max_val_per_class": 40}


def default_cache_dir() -> Path:
    """``$MIXERZOO_CACHE`` if set, else ``~/.cache/mixerzoo``."""
    return Path(os.environ.get("MIXERZOO_CACHE") or Path.home() / ".cache" / "mixerzoo")


def _progress(iterable, **kwargs):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is a dependency; a stripped environment still works, silently
        return iterable
    return tqdm(iterable, disable=None, **kwargs)  # disable=None: no bar when stderr is not a terminal


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------- corpora
@dataclasses.dataclass(frozen=True)
class Document:
    """One text. ``source``: the split unit (see module docstring); ``package``: the built-in corpus
    label (one of ``PACKAGES``), None for external corpora."""

    text: str
    source: str
    package: str | None = None


def _source_hash(source: str) -> float:
    """SHA-256 of ``source`` as a number in [0, 1)."""
    return int.from_bytes(hashlib.sha256(source.encode("utf-8")).digest()[:8], "big") / 2.0 ** 64


def split_of(source: str, val_fraction: float = VAL_FRACTION) -> str:
    """``"val"`` if the SHA-256 of ``source`` lies in the first ``val_fraction`` of the hash range, else ``"train"``."""
    return "val" if _source_hash(source) < val_fraction else "train"


class Corpus:
    """An ordered list of :class:`Document` with its SHA-256 and a split by source.

    ``spec`` (JSON-able) says how it was made; ``sha256`` covers every document's text, source and package.
    """

    def __init__(self, documents: Sequence[Document], spec: dict):
        self.documents = list(documents)
        self.spec = dict(spec)
        h = hashlib.sha256()
        for doc in self.documents:
            h.update(f"{doc.source}\0{doc.package or ''}\0{doc.text}\0\0".encode("utf-8"))
        self.sha256 = h.hexdigest()
        sources = sorted({d.source for d in self.documents}, key=_source_hash)
        self._source_split = {src: split_of(src) for src in sources}
        # a small corpus can leave a split empty by chance: then the source with the smallest hash
        # (val) or the largest (train) changes side, so both splits exist whenever two sources do
        if len(sources) >= 2 and "val" not in self._source_split.values():
            self._source_split[sources[0]] = "val"
        if len(sources) >= 2 and "train" not in self._source_split.values():
            self._source_split[sources[-1]] = "train"
        self._splits = {"train": [], "val": []}
        for doc in self.documents:
            self._splits[self._source_split[doc.source]].append(doc)
        # what caches derived from the splits (tokenizer, token ids) are keyed by: texts + split
        self.split_sha256 = hashlib.sha256(json.dumps([self.sha256, VAL_FRACTION, sorted(
            self._source_split.items())]).encode("utf-8")).hexdigest()

    def split_of_source(self, source: str) -> str:
        """The split ("train" or "val") of the documents of ``source``."""
        return self._source_split[source]

    def split(self, name: str) -> list[Document]:
        """Documents of split ``name`` ("train" or "val")."""
        if name not in self._splits:
            raise ValueError(f"split must be 'train' or 'val', got {name!r}")
        return self._splits[name]

    def describe(self) -> dict:
        return {"spec": self.spec, "sha256": self.sha256, "documents": len(self.documents),
                "split_sha256": self.split_sha256, "characters": sum(len(d.text) for d in self.documents),
                "split_documents": {k: len(v) for k, v in self._splits.items()},
                "split_sources": {k: len({d.source for d in v}) for k, v in self._splits.items()}}

    def __len__(self) -> int:
        return len(self.documents)


def strip_doctests(text: str) -> str:
    """Remove doctest blocks: a line starting with ``>>>`` and every following line up to a blank line."""
    out, in_doctest = [], False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith(">>>"):
            in_doctest = True
        elif not stripped:
            in_doctest = False
        if not in_doctest:
            out.append(line)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip()


def _string_value(node) -> str | None:
    """The literal text of a documentation argument: a string constant, ``"...".format(...)`` (the
    template), a ``+`` of such pieces, or the last element of a ``(name, doc)`` tuple."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format":
        return _string_value(node.func.value)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _string_value(node.left), _string_value(node.right)
        return None if left is None or right is None else left + right
    if isinstance(node, ast.Tuple) and node.elts:
        return _string_value(node.elts[-1])
    return None


def _doc_call_text(stmt) -> str | None:
    """The documentation string of a statement ``add_docstr(obj, "...")`` (or the other ``_DOC_CALLS``)."""
    call = stmt.value if isinstance(stmt, ast.Expr) else None
    if not isinstance(call, ast.Call) or not call.args:
        return None
    func = call.func
    if (func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)) not in _DOC_CALLS:
        return None
    raw = _string_value(call.args[-1])
    return inspect.cleandoc(raw) if raw else None


def extract_docstrings(source: bytes) -> list[str] | None:
    """Docstrings (module, classes, functions) and documentation-call strings of a Python file, in
    source order, cleaned (``inspect.cleandoc``) and with doctests removed. None if it does not parse.

    Only statements are visited (bodies of modules, classes, functions and compound statements), not
    expressions: docstrings and documentation calls are statements, and this is several times faster
    than ``ast.walk``."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    found = []
    pending = [tree]
    while pending:
        node = pending.pop()
        text = None
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            text = ast.get_docstring(node, clean=True)
        elif isinstance(node, ast.Expr):
            text = _doc_call_text(node)
        if text and (text := strip_doctests(text)):
            found.append((getattr(node, "lineno", 0), getattr(node, "col_offset", 0), text))
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            children = getattr(node, field, None)
            if isinstance(children, list):
                pending.extend(c for c in children if isinstance(c, (ast.stmt, ast.excepthandler, ast.match_case)))
    return [t for _, _, t in sorted(found)]


def _package_root(package: str) -> Path:
    if package == "stdlib":
        return Path(sysconfig.get_paths()["stdlib"])
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise DataUnavailableError(f"package {package!r} of the built-in corpus is not installed")
    return Path(spec.origin).parent


def _package_version(package: str) -> str:
    if package == "stdlib":
        return sys.version.split()[0]
    return importlib.metadata.version(package)


def _list_source_files(package: str) -> list[tuple[str, Path]]:
    """``(source id, path)`` of the Python files of ``package``, sorted; the id is ``package:relpath``."""
    root = _package_root(package)
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("config-"))
        for fname in sorted(filenames):
            if fname.endswith(".py") and fname not in _SKIP_FILES and not fname.startswith("test_"):
                path = Path(dirpath) / fname
                files.append((f"{package}:{path.relative_to(root).as_posix()}", path))
    return files


def _subset(items: list, key, limit: int | None) -> list:
    """At most ``limit`` items, chosen by the SHA-256 of ``"subset:" + key(item)`` (a fixed pseudo-random
    subset, independent of the train/val split hash), in original order."""
    if limit is None or len(items) <= limit:
        return items
    digest = [hashlib.sha256(f"subset:{key(item)}".encode()).digest() for item in items]
    chosen = set(sorted(range(len(items)), key=digest.__getitem__)[:limit])
    return [item for i, item in enumerate(items) if i in chosen]


def load_builtin_corpus(packages: Sequence[str] = PACKAGES, max_files_per_package: int | None = None,
                        cache_dir: str | os.PathLike | None = None) -> Corpus:
    """The built-in docstring corpus (module docstring). ``max_files_per_package`` keeps a fixed
    pseudo-random subset of each package's source files (pydoc topics count as stdlib files) for
    smoke-scale runs. Cost: one ``ast.parse`` per file (about 20-30 s of CPU for all five packages,
    3,200 files, 15.6 MB of text), then a gzipped-JSONL cache read (about 1 s)."""
    packages = tuple(packages)
    for p in packages:
        if p not in PACKAGES:
            raise ValueError(f"packages must be a subset of {PACKAGES}, got {p!r}")
    if not packages:
        raise ValueError("packages must name at least one of " + ", ".join(PACKAGES))
    if max_files_per_package is not None:
        check_int("max_files_per_package", max_files_per_package, minimum=1)
    spec = {"corpus": "builtin", "recipe": CORPUS_RECIPE, "packages": list(packages),
            "max_files_per_package": max_files_per_package,
            "versions": {p: _package_version(p) for p in packages}}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]
    cache_file = Path(cache_dir or default_cache_dir()) / "corpus" / f"builtin-{key}.jsonl.gz"
    if cache_file.exists():
        try:
            with gzip.open(cache_file, "rt", encoding="utf-8") as fh:
                header = json.loads(fh.readline())
                docs = [Document(**json.loads(line)) for line in fh]
            corpus = Corpus(docs, {**spec, "unparsable_files": header["unparsable_files"]})
            if corpus.sha256 == header["sha256"]:
                return corpus
        except (OSError, EOFError, ValueError, KeyError, TypeError):
            pass  # a damaged cache file (e.g. an interrupted copy) is rebuilt below

    docs, unparsable = [], 0
    for package in packages:
        units: list[tuple[str, object]] = list(_list_source_files(package))
        if package == "stdlib":
            from pydoc_data.topics import topics
            units += [(f"stdlib:pydoc_data/topics.py#{name}", topics[name]) for name in sorted(topics)]
        units = _subset(units, key=lambda u: u[0], limit=max_files_per_package)
        for source, item in _progress(units, desc=f"docstrings: {package}", unit="file"):
            if isinstance(item, Path):
                texts = extract_docstrings(item.read_bytes())
                if texts is None:
                    unparsable += 1
                    continue
            else:
                texts = [t for t in [strip_doctests(inspect.cleandoc(item))] if t]
            docs.extend(Document(text, source, package) for text in texts)
    spec["unparsable_files"] = unparsable
    corpus = Corpus(docs, spec)
    lines = [json.dumps({"sha256": corpus.sha256, "unparsable_files": unparsable})]
    lines += [json.dumps(dataclasses.asdict(d), ensure_ascii=False) for d in docs]
    _atomic_write_bytes(cache_file, gzip.compress(("\n".join(lines) + "\n").encode("utf-8"), mtime=0))
    return corpus


def _read_local_file(path: Path, text_field: str) -> list[str]:
    if path.suffix == ".txt":
        return [p.strip() for p in re.split(r"\n\s*\n", path.read_text(encoding="utf-8")) if p.strip()]
    if path.suffix == ".jsonl":
        texts = []
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
                if not isinstance(record, dict) or text_field not in record:
                    found = sorted(record) if isinstance(record, dict) else type(record).__name__
                    raise ValueError(f"{path}:{lineno}: missing field text_field={text_field!r} (found: {found})")
                if not isinstance(record[text_field], str):
                    raise ValueError(f"{path}:{lineno}: field {text_field!r} must be a string, "
                                     f"got {type(record[text_field]).__name__}")
                texts.append(record[text_field])
        return texts
    raise ValueError(f"corpus file {str(path)!r} must end in .txt or .jsonl")


def load_local_corpus(paths: Sequence[str | os.PathLike], text_field: str = "text",
                      max_documents: int | None = None) -> Corpus:
    """Documents from local ``.txt`` / ``.jsonl`` files (directories: every such file inside, sorted)."""
    # (path, name): the name is the file's path inside a given directory, else its file name, so that
    # sources (hence the split and the corpus hash) do not depend on where the files are stored
    files: list[tuple[Path, str]] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix in (".txt", ".jsonl") and f.is_file())
            if not found:
                raise DataUnavailableError(f"corpus directory {str(p)!r} holds no .txt or .jsonl files")
            files += [(f, f.relative_to(p).as_posix()) for f in found]
        elif p.is_file():
            files.append((p, p.name))
        else:
            raise DataUnavailableError(f"corpus path {str(p)!r} does not exist")
    docs = []
    for path, name in files:
        for i, text in enumerate(_read_local_file(path, text_field)):
            docs.append(Document(text, f"{name}#{i // SHARD_SIZE}"))
    if max_documents is not None:
        docs = docs[:max_documents]
    return Corpus(docs, {"corpus": [str(p) for p in paths], "text_field": text_field, "max_documents": max_documents})


def load_hf_corpus(spec: str, text_field: str = "text", hf_split: str = "train",
                   max_documents: int | None = None) -> Corpus:
    """Documents from ``"hf:<name>[:<config>]"`` (``datasets``); ``<name>`` may be a ``save_to_disk`` directory.
    With ``max_documents`` the dataset is streamed and only that many rows are read."""
    try:
        import datasets
    except ImportError as e:
        raise DataUnavailableError(f"corpus {spec!r} needs the 'datasets' package (pip install datasets)") from e
    name, _, config = spec[len("hf:"):].partition(":")
    if not name:
        raise ValueError(f"corpus must look like 'hf:<name>[:<config>]', got {spec!r}")
    try:
        if Path(name).is_dir() and any((Path(name) / f).exists() for f in ("state.json", "dataset_dict.json")):
            ds = datasets.load_from_disk(name)
            if isinstance(ds, datasets.DatasetDict):
                if hf_split not in ds:
                    raise ValueError(f"hf_split must be one of {sorted(ds)} for {spec!r}, got {hf_split!r}")
                ds = ds[hf_split]
        else:
            ds = datasets.load_dataset(name, config or None, split=hf_split, streaming=max_documents is not None)
    except (OSError, datasets.exceptions.DatasetNotFoundError) as e:
        raise DataUnavailableError(f"cannot load corpus {spec!r}: {e}") from e
    source_name = f"hf:{Path(name).name}:{config}" if Path(name).is_dir() else spec  # location-independent
    columns = ds.column_names
    if columns is not None and text_field not in columns:
        raise ValueError(f"text_field={text_field!r} is not a column of {spec!r}; columns: {columns}")
    rows = ds if max_documents is None else ds.take(max_documents) if hasattr(ds, "take") else ds.select(
        range(min(max_documents, len(ds))))
    docs = []
    for i, row in enumerate(rows):
        text = row[text_field]
        if not isinstance(text, str):
            raise ValueError(f"{spec}: row {i}: field {text_field!r} must be a string, got {type(text).__name__}")
        docs.append(Document(text, f"{source_name}#{i // SHARD_SIZE}"))
    return Corpus(docs, {"corpus": spec, "text_field": text_field, "hf_split": hf_split,
                         "max_documents": max_documents})


def load_corpus(corpus: str | os.PathLike | Sequence[str | os.PathLike] | Corpus = "builtin", *,
                max_files_per_package: int | None = None, max_documents: int | None = None,
                text_field: str = "text", hf_split: str = "train",
                cache_dir: str | os.PathLike | None = None) -> Corpus:
    """Resolve a corpus spec: ``"builtin"``, ``"hf:<name>[:<config>]"``, a path or a list of paths
    (a :class:`Corpus` is returned unchanged). Options that do not apply to the kind of corpus raise."""
    if isinstance(corpus, Corpus):
        return corpus
    if max_documents is not None:
        check_int("max_documents", max_documents, minimum=1)
    if corpus == "builtin":
        if max_documents is not None:
            raise ValueError("max_documents does not apply to corpus='builtin'; use max_files_per_package")
        return load_builtin_corpus(max_files_per_package=max_files_per_package, cache_dir=cache_dir)
    if max_files_per_package is not None:
        raise ValueError(f"max_files_per_package applies only to corpus='builtin', not {corpus!r}")
    if isinstance(corpus, str) and corpus.startswith("hf:"):
        return load_hf_corpus(corpus, text_field=text_field, hf_split=hf_split, max_documents=max_documents)
    if isinstance(corpus, (str, os.PathLike)):
        corpus = [corpus]
    if not (isinstance(corpus, (list, tuple)) and corpus and all(isinstance(p, (str, os.PathLike)) for p in corpus)):
        raise ValueError("corpus must be 'builtin', 'hf:<name>[:<config>]' or local .txt/.jsonl path(s); "
                         f"got {corpus!r}")
    return load_local_corpus(corpus, text_field=text_field, max_documents=max_documents)


# -------------------------------------------------------------------------------------------- tokenizer
def _bert_text_pipeline():
    """The BERT normalizer (lower-casing, accent stripping) and pre-tokenizer of the tokenizer."""
    from tokenizers import normalizers, pre_tokenizers
    return normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()


def count_words(texts: Iterable[str], length: int | None = None) -> dict[str, int]:
    """How often each word occurs in ``texts``, a word being what the tokenizer's own BERT normalizer
    and pre-tokenizer produce (so training sees exactly the words that encoding will see).
    ``length``: the number of texts, for the progress bar only. O(total characters)."""
    import collections
    normalizer, pre_tokenizer = _bert_text_pipeline()
    counts: collections.Counter = collections.Counter()
    for t in _progress(texts, total=length, desc="count words", unit="doc"):
        counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(t)))
    return dict(counts)


def wordpiece_vocabulary(word_counts: dict[str, int], vocab_size: int,
                         special_tokens: Sequence[str] = SPECIAL_TOKENS, prefix: str = "##") -> list[str]:
    """A WordPiece vocabulary (token list, index = id) learned by byte-pair-encoding merges over words,
    deterministically.

    This is the training rule of the ``tokenizers`` library's ``WordPieceTrainer`` (BPE, Sennrich et al.
    2016, on words spelt with a continuation prefix: ``"word"`` -> ``w ##o ##r ##d``), with token ids
    that do not depend on hash-map iteration order:

    1. ids ``0..len(special_tokens)-1``: ``special_tokens``;
    2. the alphabet: every character of every word as a word-initial token, sorted by code point,
       then ``prefix + c`` for every character ``c`` found after a word's first character, sorted by
       ``c`` (the library numbers these in the random order it meets them: the source of its
       nondeterminism);
    3. merges until the vocabulary has ``vocab_size`` tokens or every word is one token: the adjacent
       pair ``(left, right)`` with the largest count (summed over word occurrences) is merged into
       ``left + right[len(prefix):]``, every occurrence in every word, left to right; ties go to the
       smallest ``(id(left), id(right))`` (as in the library: older tokens first, and among the
       alphabet, code-point order). A merge whose token already exists (the same string reached
       through another pair) adds no token.

    The result is a function of ``word_counts`` (a mapping; its order is irrelevant), ``vocab_size``,
    ``special_tokens`` and ``prefix`` only: the same in every process and on every machine. On the
    built-in corpus it equals the library's vocabulary as a set up to the few low-count ties whose
    order the library decides by its random ids.

    ``word_counts``: word -> number of occurrences (int >= 0; zero counts are absent words).
    Raises ValueError if a count is not a non-negative int or if ``vocab_size`` cannot hold the
    special tokens and the alphabet. Cost: O(number of distinct words x word length) to start, then
    per merge O(distinct words holding the pair x word length + log(heap size)); about 2 s for the
    28,000 distinct words of the built-in corpus and 8,000 tokens.
    """
    import heapq
    check_int("vocab_size", vocab_size, minimum=len(special_tokens) + 1)
    for word, count in word_counts.items():
        if not isinstance(count, (int, np.integer)) or isinstance(count, bool) or count < 0:
            raise ValueError(f"word_counts must map words to ints >= 0, got {word!r}: {count!r}")
    word_list = sorted(w for w, c in word_counts.items() if c > 0 and w)
    freq = [word_counts[w] for w in word_list]
    initial = sorted({ch for w in word_list for ch in w})
    continuation = sorted({prefix + ch for w in word_list for ch in w[1:]})
    vocab = list(special_tokens) + initial + continuation
    if len(set(vocab)) != len(vocab):
        raise ValueError(f"special_tokens must differ from each other and from single characters, "
                         f"got {list(special_tokens)!r}")
    if len(vocab) > vocab_size:
        raise ValueError(f"vocab_size={vocab_size} cannot hold the {len(vocab)} tokens the corpus needs before any "
                         f"merge ({len(special_tokens)} special, {len(initial)} characters, {len(continuation)} "
                         f"'{prefix}' continuations); use vocab_size >= {len(vocab)}")
    symbols = [[w[0]] + [prefix + ch for ch in w[1:]] for w in word_list]
    pair_count: dict[tuple[str, str], int] = {}
    pair_words: dict[tuple[str, str], set[int]] = {}
    for i, syms in enumerate(symbols):
        for pair in zip(syms, syms[1:]):
            pair_count[pair] = pair_count.get(pair, 0) + freq[i]
            pair_words.setdefault(pair, set()).add(i)
    # heap keys (-count, id(left), id(right)): tuples compare in exactly the merge order of rule 3;
    # entries whose count is out of date are skipped when popped (lazy deletion)
    token_id = {t: i for i, t in enumerate(vocab)}
    heap = [(-c, token_id[pair[0]], token_id[pair[1]], pair) for pair, c in pair_count.items()]
    heapq.heapify(heap)
    cut = len(prefix)
    while len(vocab) < vocab_size and heap:
        neg, _, _, pair = heapq.heappop(heap)
        if pair_count.get(pair, 0) != -neg:
            continue
        left, right = pair
        merged = left + right[cut:]
        if merged not in token_id:
            token_id[merged] = len(vocab)
            vocab.append(merged)
        delta: dict[tuple[str, str], int] = {}
        for i in sorted(pair_words.pop(pair)):
            old = symbols[i]
            new, j = [], 0
            while j < len(old):  # left to right, non-overlapping (as in "a a a" -> "aa a")
                if j + 1 < len(old) and old[j] == left and old[j + 1] == right:
                    new.append(merged)
                    j += 2
                else:
                    new.append(old[j])
                    j += 1
            symbols[i] = new
            old_pairs, new_pairs = list(zip(old, old[1:])), list(zip(new, new[1:]))
            for p in old_pairs:
                delta[p] = delta.get(p, 0) - freq[i]
            for p in new_pairs:
                delta[p] = delta.get(p, 0) + freq[i]
            for p in set(old_pairs) - set(new_pairs):
                if p != pair:
                    pair_words[p].discard(i)
            for p in new_pairs:
                pair_words.setdefault(p, set()).add(i)
        for p, d in delta.items():
            if d:
                c = pair_count.get(p, 0) + d
                if c > 0:
                    pair_count[p] = c
                    heapq.heappush(heap, (-c, token_id[p[0]], token_id[p[1]], p))
                else:
                    pair_count.pop(p, None)
                    pair_words.pop(p, None)
        pair_count.pop(pair, None)
    return vocab


def train_tokenizer(texts: Iterable[str], vocab_size: int, length: int | None = None):
    """Train a WordPiece ``tokenizers.Tokenizer`` (BERT normalizer and pre-tokenizer, the special tokens
    of ``SPECIAL_TOKENS`` at ids 0..4, ``[CLS] A [SEP] (B [SEP])`` post-processor, WordPiece decoder).

    The vocabulary is :func:`wordpiece_vocabulary` of :func:`count_words`: the training rule of
    ``tokenizers.trainers.WordPieceTrainer`` with deterministic token ids. The trainer itself is not
    used: it numbers the ``##`` continuation characters in the iteration order of a Rust hash map,
    randomly seeded in every process (no environment variable fixes it; ``RAYON_NUM_THREADS=1`` does
    not help), and breaks ties between equal-count merges by those ids, so two runs on the same texts
    give different token ids and, at larger sizes, different token sets. Encoding is the library's
    WordPiece model (greedy longest-match-first, Wu et al. 2016; words over 100 characters ->
    ``[UNK]``). The vocabulary has at most ``vocab_size`` entries (fewer if the texts have fewer
    distinct subwords). ``length``: number of texts, for the progress bar only.
    Cost: about 8 s for the built-in corpus (15 MB, 3.4 M words) at 8,192 tokens, 3/4 of it counting words.
    Raises ValueError if ``vocab_size`` cannot hold the special tokens and the alphabet."""
    from tokenizers import Tokenizer, decoders, models, processors
    check_int("vocab_size", vocab_size, minimum=len(SPECIAL_TOKENS) + 1)
    vocab = wordpiece_vocabulary(count_words(texts, length), vocab_size)
    tok = Tokenizer(models.WordPiece({token: i for i, token in enumerate(vocab)}, unk_token="[UNK]",
                                     continuing_subword_prefix="##", max_input_chars_per_word=100))
    tok.normalizer, tok.pre_tokenizer = _bert_text_pipeline()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", CLS_ID), ("[SEP]", SEP_ID)])
    tok.add_special_tokens(list(SPECIAL_TOKENS))  # never split, skipped by decode(skip_special_tokens=True)
    for i, name in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(name) != i:
            raise RuntimeError(f"tokenizer put {name} at id {tok.token_to_id(name)}, expected {i}")
    if tok.get_vocab_size() > vocab_size:
        raise RuntimeError(f"WordPiece produced {tok.get_vocab_size()} tokens, more than vocab_size={vocab_size}")
    return tok


def tokenizer_sha256(tokenizer) -> str:
    """SHA-256 of the tokenizer's JSON serialization (recorded with results to pair pretraining and fine-tuning)."""
    return hashlib.sha256(tokenizer.to_str().encode("utf-8")).hexdigest()


def get_tokenizer(vocab_size: int = 8192, corpus="builtin", cache_dir: str | os.PathLike | None = None,
                  **corpus_options):
    """The WordPiece tokenizer for ``corpus`` (a spec for :func:`load_corpus` or a :class:`Corpus`),
    trained on its train split on first use and cached at
    ``<cache_dir>/tokenizers/<recipe>-<vocab_size>-<corpus split_sha256[:20]>.json`` (the corpus hash
    extended by its train/val assignment, since only the train split is used).
    Returns a ``tokenizers.Tokenizer``. Cost: about 1 s per 2 MB of text to train, then a file read."""
    from tokenizers import Tokenizer
    check_int("vocab_size", vocab_size, minimum=len(SPECIAL_TOKENS) + 1)
    cache_dir = Path(cache_dir or default_cache_dir())
    corpus = load_corpus(corpus, cache_dir=cache_dir, **corpus_options)
    path = cache_dir / "tokenizers" / f"{TOKENIZER_RECIPE}-{vocab_size}-{corpus.split_sha256[:20]}.json"
    if path.exists():
        return Tokenizer.from_file(str(path))
    train = corpus.split("train")
    if not train:
        raise ValueError(f"corpus {corpus.spec.get('corpus')!r} has no training documents to train a tokenizer on")
    tok = train_tokenizer((d.text for d in train), vocab_size, length=len(train))
    _atomic_write_bytes(path, tok.to_str().encode("utf-8"))
    return tok


def _encode_texts(tokenizer, texts: list[str], desc: str) -> list[list[int]]:
    """Token ids of each text without special tokens, in batches (for a progress bar)."""
    out: list[list[int]] = []
    step = 2048
    for start in _progress(range(0, len(texts), step), desc=desc, unit="batch"):
        out += [e.ids for e in tokenizer.encode_batch(texts[start:start + step], add_special_tokens=False)]
    return out


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
    (smoke preset: ``max_files_per_package=60`` and at most 128 eval sequences unless given),
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
