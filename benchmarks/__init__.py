"""Speed and memory benchmarks run by ``mixerzoo bench <name>``; each module has a ``main(argv)``."""
from __future__ import annotations

import torch


def parse_device(text: str, fail) -> torch.device:
    """``--device`` as a ``torch.device``: ``cpu``, or ``cuda[:k]`` where a GPU is present. Anything else goes
    to ``fail(message)`` (``ArgumentParser.error`` or a raiser of the CLI's usage error), which must not return."""
    try:
        dev = torch.device(text)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        fail(f"--device must be cpu or cuda[:k], got {text!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        fail(f"--device {text}: no CUDA device is available here; allowed: cpu")
    return dev
