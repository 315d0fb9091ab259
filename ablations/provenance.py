"""Which code made a result: a fingerprint recorded in every run's ``config.json`` and ``summary.json``.

A run id hashes the resolved config, not the code, so an edited mixer would silently reuse the runs of
the old one. The fingerprint is ``{"version", "source_hash", "git"}``: the installed mixerzoo version,
a SHA-256 over the sources of the four packages as imported (relative path and bytes of every ``.py``
file; so an editable install and a wheel of the same tree agree), and the git commit of the
checkout when there is one (``+dirty`` with uncommitted changes). Runs are compared on ``source_hash``.
"""
from __future__ import annotations

import functools
import hashlib
import subprocess
from pathlib import Path

PACKAGES = ("ablations", "mixers", "structured", "kernels")
SUFFIXES = (".py",)  # code only: grid files reach results through the config, which the run id hashes


def _package_dirs() -> list[tuple[str, Path]]:
    import importlib.util
    out = []
    for name in PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            out.append((name, Path(list(spec.submodule_search_locations)[0])))
    return out


@functools.lru_cache(maxsize=1)
def source_hash() -> str:
    """SHA-256 (hex, first 16 digits) of the package sources this process imports."""
    h = hashlib.sha256()
    for name, root in _package_dirs():
        for p in sorted(root.rglob("*")):
            if p.suffix in SUFFIXES and p.is_file() and "__pycache__" not in p.parts:
                h.update(f"{name}/{p.relative_to(root).as_posix()}\0".encode())
                h.update(p.read_bytes())
                h.update(b"\0")
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def git_revision() -> str | None:
    """``<commit>[+dirty]`` of the checkout the code runs from; None outside a git checkout."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
        if not head:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def package_version() -> str | None:
    try:
        from importlib.metadata import version
        return version("mixerzoo")
    except Exception:  # noqa: BLE001 - not installed (a bare checkout on PYTHONPATH)
        return None


def fingerprint() -> dict:
    """``{"version", "source_hash", "git"}`` of the running code."""
    return {"version": package_version(), "source_hash": source_hash(), "git": git_revision()}


def made_by_other_code(summary: dict) -> bool:
    """Whether a finished run's summary was written by code other than this (or does not say)."""
    code = summary.get("code")
    return not isinstance(code, dict) or code.get("source_hash") != source_hash()
