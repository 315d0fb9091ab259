"""Execution backends that spread a grid beyond one process: :mod:`.ray_backend` (a Ray cluster, one run per
GPU or several per GPU). The local worker pool and torchrun/DDP live in :mod:`ablations.runner` and
:mod:`ablations.trainer`.

:func:`worker_env` is the environment every backend hands to the processes it starts on other machines:
NVLink multicast stays off (the parent's value of each variable where set, the "off" value otherwise) and
the parent's other NCCL settings go along.
"""
from __future__ import annotations

import os

from ..trainer import MULTICAST_OFF, multicast_off_env

PASS_THROUGH_PREFIXES = ("NCCL_", "TORCH_NCCL_", "NVSHMEM_", "TORCH_SYMM_MEM_")


def worker_env(environ=None) -> dict[str, str]:
    """Variables to set in a worker started by a backend: every ``NCCL_*``, ``TORCH_NCCL_*``,
    ``NVSHMEM_*`` and ``TORCH_SYMM_MEM_*`` variable of ``environ`` (default ``os.environ``), and the
    NVLink-multicast switches of :data:`ablations.trainer.MULTICAST_OFF` set to "off" where unset."""
    environ = os.environ if environ is None else environ
    env = {k: v for k, v in environ.items() if k.startswith(PASS_THROUGH_PREFIXES)}
    env.update(multicast_off_env(environ))
    return env


__all__ = ["MULTICAST_OFF", "worker_env"]
