"""A BERT-style encoder around :class:`mixers.MatrixMixerBlock`, with MLM and sequence-classification heads.

Architecture (pre-norm): token embeddings (+ optional learned position embeddings) -> dropout ->
n_layers x [h += Dropout(Block(LayerNorm(h), mask)); h += Dropout(MLP(LayerNorm(h)))] -> LayerNorm.
``mlp_ratio=0`` drops the MLP: the Hydra paper's BERT layers are mixer-only (goombalab/hydra's
``BertLayer`` wraps just the mixer and a LayerNorm). Its code is post-norm (``is_prenorm=False``, with
an embedding LayerNorm and no final norm); this encoder is pre-norm with a final norm, which has the
same parameter count.

The mixer and its parameterization are constructor arguments, so every registered mixer (built-in or
plug-in) gives an encoder by name.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import registry
from .base import MatrixMixerBlock, _check_int, normalize_mask

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"


class _Pretrained:
    """``save_pretrained(dir)`` / ``from_pretrained(dir)`` in the layout of the Hugging Face ecosystem:
    ``config.json`` (the constructor arguments, ``model_type`` = the class name) and ``model.safetensors``
    (the weights; no pickle). ``from_pretrained`` also takes a Hub repo id when ``huggingface_hub`` is
    installed. Subclasses implement ``_config()`` and ``_from_config(config)``."""

    def save_pretrained(self, save_directory: str | os.PathLike, extra: dict | None = None) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``save_directory`` (created). ``extra``:
        JSON-able facts stored under the config's ``"mixerzoo"`` key (e.g. task and label names)."""
        from safetensors.torch import save_model
        path = Path(save_directory)
        path.mkdir(parents=True, exist_ok=True)
        config = {"model_type": type(self).__name__, **self._config()}
        if extra:
            config["mixerzoo"] = extra
        (path / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        save_model(self, str(path / WEIGHTS_NAME))
        return path

    @classmethod
    def from_pretrained(cls, pretrained: str | os.PathLike, map_location: str | torch.device = "cpu", **hub_kwargs):
        """The model saved by :meth:`save_pretrained` in the directory (or Hub repo id) ``pretrained``,
        in eval mode on ``map_location``. Loading ``MixerEncoder`` from a saved MLM or classification
        model takes its encoder."""
        from safetensors.torch import load_file
        files = _resolve(pretrained, hub_kwargs)
        config = json.loads(Path(files[CONFIG_NAME]).read_text())
        model_type = config.get("model_type")
        if model_type not in _MODEL_TYPES:
            raise ValueError(f"{CONFIG_NAME} of {str(pretrained)!r}: model_type must be one of "
                             f"{sorted(_MODEL_TYPES)}, got {model_type!r}")
        state = load_file(str(files[WEIGHTS_NAME]), device=str(map_location))
        if model_type != cls.__name__:
            if cls is not MixerEncoder:
                raise ValueError(f"{str(pretrained)!r} holds a {model_type}, not a {cls.__name__}")
            config = config["encoder"]
            state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
        with torch.device(map_location):
            model = cls._from_config(config)
        model.load_state_dict(state, strict=True)
        return model.eval()


def _resolve(pretrained, hub_kwargs) -> dict:
    path = Path(pretrained)
    if path.is_dir():
        missing = [n for n in (CONFIG_NAME, WEIGHTS_NAME) if not (path / n).is_file()]
        if missing:
            raise FileNotFoundError(f"{str(path)!r} lacks {', '.join(missing)} (written by save_pretrained)")
        return {n: path / n for n in (CONFIG_NAME, WEIGHTS_NAME)}
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise FileNotFoundError(f"{str(pretrained)!r} is not a directory (and huggingface_hub, needed for "
                                f"Hub repo ids, is not installed)") from None
    return {n: hf_hub_download(str(pretrained), n, **hub_kwargs) for n in (CONFIG_NAME, WEIGHTS_NAME)}


class MixerEncoder(_Pretrained, nn.Module):
    """BERT-style pre-norm encoder with a matrix mixer in every layer.

    Parameters
    ----------
    vocab_size, d_model, n_layers: sizes.
    mixer, sequence_aligned: the mixer name and parameterization (see :class:`MatrixMixerBlock`).
    max_seq_len: longest input (rows of the fixed tables and of the position embeddings).
    position_embeddings: add learned absolute position embeddings (then inputs are limited to
        ``max_seq_len`` even for sequence-aligned mixers).
    mlp_ratio: hidden width of the MLP as a multiple of d_model (0 = no MLP, the paper's layer).
    dropout: dropout after the embeddings and on each residual branch.
    block_kwargs: passed to every :class:`MatrixMixerBlock` (expand, headdim, qk_dim, d_conv, impl, mixer options).

    forward(input_ids (B, L) long, attention_mask (B, L) bool or None) -> hidden (B, L, d_model).
    """

    def __init__(self, vocab_size: int, d_model: int, n_layers: int, mixer, sequence_aligned: bool,
                 max_seq_len: int, position_embeddings: bool = False, mlp_ratio: int = 4, dropout: float = 0.0,
                 **block_kwargs):
        super().__init__()
        _check_int("vocab_size", vocab_size, 1)
        _check_int("d_model", d_model, 1)
        _check_int("n_layers", n_layers, 1)
        _check_int("max_seq_len", max_seq_len, 1)
        _check_int("mlp_ratio", mlp_ratio, 0)
        if not (isinstance(dropout, (int, float)) and 0.0 <= dropout < 1.0):
            raise ValueError(f"dropout must be a float in [0, 1), got {dropout!r}")
        self.vocab_size, self.d_model, self.n_layers, self.max_seq_len = vocab_size, d_model, n_layers, max_seq_len
        # the constructor arguments, for save_pretrained (a mixer given as an object cannot be saved by name)
        self._init_args = dict(vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, mixer=mixer,
                               sequence_aligned=sequence_aligned, max_seq_len=max_seq_len,
                               position_embeddings=position_embeddings, mlp_ratio=mlp_ratio, dropout=dropout,
                               **block_kwargs)
        self.mixer_name = mixer if isinstance(mixer, str) else getattr(mixer, "name", repr(mixer))
        self.sequence_aligned = sequence_aligned
        self.embeddings = nn.Embedding(vocab_size, d_model)
        nn.init.normal_(self.embeddings.weight, std=0.02)
        self.position_embeddings = nn.Embedding(max_seq_len, d_model) if position_embeddings else None
        if self.position_embeddings is not None:
            nn.init.normal_(self.position_embeddings.weight, std=0.02)
        self.dropout = nn.Dropout(dropout)
        self.mixer_norms = nn.ModuleList()
        self.blocks = nn.ModuleList()
        self.mlp_norms = nn.ModuleList()
        self.mlps = nn.ModuleList()
        for _ in range(n_layers):
            self.mixer_norms.append(nn.LayerNorm(d_model))
            self.blocks.append(MatrixMixerBlock(d_model, mixer, sequence_aligned, max_seq_len=max_seq_len,
                                                **block_kwargs))
            if mlp_ratio > 0:
                self.mlp_norms.append(nn.LayerNorm(d_model))
                self.mlps.append(nn.Sequential(nn.Linear(d_model, mlp_ratio * d_model), nn.GELU(),
                                               nn.Linear(mlp_ratio * d_model, d_model)))
        self.final_norm = nn.LayerNorm(d_model)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype != torch.long:
            raise ValueError(f"input_ids must be a long tensor of shape (B, L), got "
                             f"{getattr(input_ids, 'dtype', type(input_ids).__name__)} "
                             f"{tuple(getattr(input_ids, 'shape', ()))}")
        if input_ids.numel():
            lo, hi = torch.stack(torch.aminmax(input_ids)).tolist()  # one host sync, not two
            if lo < 0 or hi >= self.vocab_size:
                raise ValueError(f"input_ids must lie in [0, vocab_size={self.vocab_size}), got values in "
                                 f"[{lo}, {hi}]")
        L = input_ids.shape[1]
        h = self.embeddings(input_ids)
        if self.position_embeddings is not None:
            if L > self.max_seq_len:
                raise ValueError(f"input length L={L} exceeds max_seq_len={self.max_seq_len}: learned position "
                                 f"embeddings are not extendable (use position_embeddings=False)")
            h = h + self.position_embeddings(torch.arange(L, device=input_ids.device))
        h = self.dropout(h)
        # Check the mask here (each check reads it back to the host: three syncs) and pass an all-real one on
        # as None, so the blocks skip both the check and their masked paths. A padded mask is checked again
        # by each block, whose forward is public and validates its own input.
        attention_mask = normalize_mask(attention_mask, h.shape[:2])
        for i, block in enumerate(self.blocks):
            h = h + self.dropout(block(self.mixer_norms[i](h), attention_mask))
            if self.mlps:
                h = h + self.dropout(self.mlps[i](self.mlp_norms[i](h)))
        return self.final_norm(h)

    def num_parameters(self) -> int:
        """Number of distinct parameters (tied weights counted once)."""
        return sum(p.numel() for p in self.parameters())

    def _config(self) -> dict:
        if not isinstance(self._init_args["mixer"], str):
            raise ValueError(f"save_pretrained needs the mixer given by its registered name, got "
                             f"{self._init_args['mixer']!r}")
        try:
            json.dumps(self._init_args)
        except TypeError as e:
            raise ValueError(f"save_pretrained needs JSON-able constructor arguments: {e}") from None
        return dict(self._init_args)

    @classmethod
    def _from_config(cls, config: dict) -> "MixerEncoder":
        config = {k: v for k, v in config.items() if k != "model_type"}
        return cls(**config)


class MixerForMaskedLM(_Pretrained, nn.Module):
    """Masked-LM head on a :class:`MixerEncoder`: dense + GELU + LayerNorm, then a decoder tied to the
    token embeddings (plus a bias). forward(input_ids, attention_mask=None) -> logits (B, L, vocab).

    ``forward(..., positions=m)`` with a boolean ``(B, L)`` mask applies the head only where ``m`` is True and
    returns ``(m.sum(), vocab)`` logits in row-major order of ``m``: a masked-LM loss scores about 15% of the
    positions, and the vocabulary projection and its cross-entropy are most of a small model's step, so
    training skips them elsewhere (the loss is the same; the head is position-wise).
    """

    predicts_selected = True  # forward accepts ``positions`` (the trainer checks this, not the class)

    def __init__(self, encoder: MixerEncoder):
        super().__init__()
        if not isinstance(encoder, MixerEncoder):
            raise ValueError(f"encoder must be a MixerEncoder, got {type(encoder).__name__}")
        d = encoder.d_model
        self.encoder = encoder
        self.transform = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d))
        self.bias = nn.Parameter(torch.zeros(encoder.vocab_size))

    def forward(self, input_ids, attention_mask=None, positions=None):
        h = self.encoder(input_ids, attention_mask)
        if positions is not None:
            if positions.dtype != torch.bool or positions.shape != h.shape[:2]:
                raise ValueError(f"positions must be a boolean mask of shape {tuple(h.shape[:2])}, got "
                                 f"{positions.dtype} {tuple(positions.shape)}")
            h = h[positions]
        return F.linear(self.transform(h), self.encoder.embeddings.weight, self.bias)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _config(self) -> dict:
        return {"encoder": self.encoder._config()}

    @classmethod
    def _from_config(cls, config: dict) -> "MixerForMaskedLM":
        return cls(MixerEncoder._from_config(config["encoder"]))


class MixerForSequenceClassification(_Pretrained, nn.Module):
    """Sequence-classification head on a :class:`MixerEncoder`.

    pooling: "mean" (mean over the real tokens of attention_mask) or "first" (the first token).
    Pooled -> dense + tanh -> dropout -> linear to ``num_labels`` (1 = regression).
    forward(input_ids, attention_mask=None) -> logits (B, num_labels).
    """

    POOLINGS = ("mean", "first")

    def __init__(self, encoder: MixerEncoder, num_labels: int, pooling: str = "mean", dropout: float = 0.0):
        super().__init__()
        if not isinstance(encoder, MixerEncoder):
            raise ValueError(f"encoder must be a MixerEncoder, got {type(encoder).__name__}")
        _check_int("num_labels", num_labels, 1)
        if pooling not in self.POOLINGS:
            raise ValueError(f"pooling must be one of {self.POOLINGS}, got {pooling!r}")
        d = encoder.d_model
        self.encoder, self.num_labels, self.pooling, self._dropout = encoder, num_labels, pooling, dropout
        self.pooler = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Dropout(dropout))
        self.classifier = nn.Linear(d, num_labels)

    def forward(self, input_ids, attention_mask=None):
        h = self.encoder(input_ids, attention_mask)
        if self.pooling == "first":
            pooled = h[:, 0]
        elif attention_mask is None:
            pooled = h.mean(1)
        else:
            w = attention_mask.to(h.dtype)[..., None]
            pooled = (h * w).sum(1) / w.sum(1)
        return self.classifier(self.pooler(pooled))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _config(self) -> dict:
        return {"encoder": self.encoder._config(), "num_labels": self.num_labels, "pooling": self.pooling,
                "dropout": self._dropout}

    @classmethod
    def _from_config(cls, config: dict) -> "MixerForSequenceClassification":
        return cls(MixerEncoder._from_config(config["encoder"]), num_labels=config["num_labels"],
                   pooling=config["pooling"], dropout=config["dropout"])


_MODEL_TYPES = {c.__name__: c for c in (MixerEncoder, MixerForMaskedLM, MixerForSequenceClassification)}


def param_table(d_model: int = 768, n_layers: int = 12, vocab_size: int = 30522, max_seq_len: int = 128,
                headdim: int = 128, qk_dim: int = 16, mlp_ratio: int = 0, position_embeddings: bool = True,
                **block_kwargs) -> list[dict]:
    """Encoder parameter counts for every registered mixer x supported parameterization.

    Defaults are the paper's BERT-base setting (Table 2: hidden 768, 12 layers, expand 2, headdim 128,
    qk_dim 16, L = 128, learned position embeddings, mixer-only layers: ``mlp_ratio=0``). The models
    are built on the ``meta`` device (no memory, no initialization cost).

    Counts are of the encoder only. They equal the paper code's encoder at this setting for every
    Table 2 row except quasiseparable (about 0.1M less: its diagonal is an in_proj channel, not
    ``fc_D``) and add up to 66.2M (dft) .. 70.1M (quasiseparable, sequence-aligned): the q/k (or B/C)
    projections of the sequence-aligned rows are the spread, in the paper's code too. The paper's
    pretraining model adds about 0.62M to every row (MLM head transform and decoder bias, token-type
    embeddings; its embedding LayerNorm stands for our final norm) and uses position embeddings only for its sequence-aligned
    attention, Cauchy and low-rank runs.
    Returns ``[dict(mixer=name, sequence_aligned=bool, params=int), ...]`` sorted by name.
    """
    rows = []
    for name, params in registry.names().items():
        for p in params:
            with torch.device("meta"):
                enc = MixerEncoder(vocab_size, d_model, n_layers, name, p == "sequence_aligned", max_seq_len,
                                   position_embeddings=position_embeddings, mlp_ratio=mlp_ratio, headdim=headdim,
                                   qk_dim=qk_dim, **block_kwargs)
            rows.append(dict(mixer=name, sequence_aligned=p == "sequence_aligned", params=enc.num_parameters()))
    return rows
