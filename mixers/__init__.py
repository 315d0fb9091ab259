"""mixers: the fixed matrix-mixer block, one mixer per structured class, and a BERT-style encoder.

    import mixers
    mixers.names()                      # {name: supported parameterizations}
    block = mixers.MatrixMixerBlock(d_model=64, mixer="cauchy", sequence_aligned=True,
                                    max_seq_len=128, headdim=16, qk_dim=8, impl="fast")
    y = block(u, mask)                  # (B, L, d_model) -> (B, L, d_model)
    M = block.matrix(u)                 # the StructuredMatrix applied, batch (B, heads)

A new mixer is one :class:`Mixer` subclass with ``@mixers.register_mixer("name")``; installed packages
register through the entry-point group ``mixerzoo.mixers`` (loaded lazily by :func:`names` / :func:`get`).
See ``mixers/examples/banded.py`` for a complete plug-in.
"""
from __future__ import annotations

from .registry import ENTRY_POINT_GROUP, PARAMETERIZATIONS, get, names, register_mixer, unregister_mixer
from .base import Channels, GatedRMSNorm, MatrixMixerBlock, Mixer, UnknownMixerError
from . import zoo  # noqa: F401  (registers the built-in mixers)
from .encoder import MixerEncoder, MixerForMaskedLM, MixerForSequenceClassification, param_table

__all__ = ["MatrixMixerBlock", "Mixer", "Channels", "GatedRMSNorm", "register_mixer", "unregister_mixer", "names",
           "get", "ENTRY_POINT_GROUP", "PARAMETERIZATIONS", "MixerEncoder", "MixerForMaskedLM",
           "MixerForSequenceClassification", "param_table", "UnknownMixerError"]
