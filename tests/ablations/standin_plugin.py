"""Test plug-in: a tiny stand-in model and two tiny tasks, so the trainer/runner tests do not depend on
the mixers or the text tasks. Imported through ``RunConfig.plugins`` (``standin_plugin``) and
``model.builder`` (``standin_plugin:build``); worker processes find it through PYTHONPATH."""
from __future__ import annotations

import os

import torch
import torch.nn as nn

from ablations.tasks.base import IGNORE_INDEX, Task, generator_for, register_task, task_names

VOCAB = 12


class TinyEncoder(nn.Module):
    def __init__(self, vocab, d, max_len, dropout):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.mix = nn.Linear(max_len, max_len, bias=False)  # a dense fixed mixer over positions
        self.ff = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Dropout(dropout))
        self.max_len = max_len

    def forward(self, ids, mask):
        if ids.shape[1] > self.max_len:
            raise ValueError(f"sequence longer than max_seq_len={self.max_len}")
        h = self.emb(ids) * mask[..., None]
        w = self.mix.weight[: ids.shape[1], : ids.shape[1]]
        h = h + torch.einsum("ij,bjd->bid", w, h)
        return h + self.ff(h)


class StandIn(nn.Module):
    """forward(input_ids, attention_mask) -> logits; ``poison_step``: forward returns NaN from the
    training call with that index on (to exercise the non-finite guard); ``exit_at_call``: the process
    ends at once (``os._exit``, as if killed) at that training call, once: it creates ``exit_marker``
    first and does not exit when the marker exists."""

    def __init__(self, vocab, d, max_len, kind, num_labels, poison_step=None, dropout=0.1, exit_at_call=None,
                 exit_marker=None, kill_step=None):
        super().__init__()
        self.exit_at_call, self.exit_marker = exit_at_call, exit_marker
        self.encoder = TinyEncoder(vocab, d, max_len, dropout)
        self.head = nn.Linear(d, num_labels)
        self.kind = kind
        self.poison_step = poison_step
        self.kill_step = kill_step
        self.calls = 0

    def forward(self, input_ids, attention_mask=None):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        h = self.encoder(input_ids, attention_mask)
        if self.kind == "sequence":
            m = attention_mask[..., None].to(h.dtype)
            h = (h * m).sum(1) / m.sum(1).clamp_min(1)
        out = self.head(h)
        if self.training:
            self.calls += 1
            if self.kill_step is not None and self.calls >= self.kill_step:  # as the OOM killer would
                import signal
                os.kill(os.getpid(), signal.SIGKILL)
            if self.poison_step is not None and self.calls >= self.poison_step:
                out = out * float("nan")
            if self.exit_at_call == self.calls and not os.path.exists(self.exit_marker):
                open(self.exit_marker, "w").close()
                os._exit(19)
        return out

    def num_parameters(self):
        return sum(p.numel() for p in self.parameters())


def build(model_cfg, task, stage, max_seq_len):
    return StandIn(task.vocab_size, model_cfg.d_model, max_seq_len, task.kind, task.num_labels,
                   poison_step=model_cfg.mixer_kwargs.get("poison_step"), dropout=model_cfg.dropout,
                   exit_at_call=model_cfg.mixer_kwargs.get("exit_at_call"),
                   exit_marker=model_cfg.mixer_kwargs.get("exit_marker"),
                   kill_step=model_cfg.mixer_kwargs.get("kill_step"))


class _Tiny(Task):
    vocab_size = VOCAB

    def __init__(self, seq_len: int = 8, num_examples: int = 32, extrapolate: bool = False, step_log=None):
        self.step_log = step_log  # a file that gets "<pid> <step>" per training batch asked for
        self.seq_len = seq_len
        self.num_examples = num_examples
        self.eval_splits = ("val", "val_2x") if extrapolate else ("val",)

    def _make(self, gen, n, length):
        raise NotImplementedError

    def train_batch(self, step, batch_size, seed):
        if self.step_log:
            with open(self.step_log, "a") as f:
                f.write(f"{os.getpid()} {step}\n")
        return self._make(generator_for(self.name, "train", seed, step), batch_size, self.seq_len)

    def eval_batches(self, split, batch_size):
        length = 2 * self.seq_len if split == "val_2x" else self.seq_len
        data = self._make(generator_for(self.name, split), self.num_examples, length)
        for i in range(0, self.num_examples, batch_size):
            yield {k: v[i:i + batch_size] for k, v in data.items()}


class TinyCopy(_Tiny):
    """Token task: predict the token at masked positions (id 0 is the mask)."""
    kind = "token"
    num_labels = VOCAB

    def _make(self, gen, n, length):
        ids = torch.randint(1, VOCAB, (n, length), generator=gen)
        labels = torch.full_like(ids, IGNORE_INDEX)
        pick = torch.rand(n, length, generator=gen) < 0.3
        labels[pick] = ids[pick]
        inp = ids.clone()
        inp[pick] = 0
        return {"input_ids": inp, "attention_mask": torch.ones_like(ids, dtype=torch.bool), "labels": labels}


class TinyParity(_Tiny):
    """Sequence task: is token 1 present more often than token 2?"""
    kind = "sequence"
    num_labels = 2

    def _make(self, gen, n, length):
        ids = torch.randint(1, VOCAB, (n, length), generator=gen)
        labels = ((ids == 1).sum(1) > (ids == 2).sum(1)).long()
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids, dtype=torch.bool), "labels": labels}


for _name, _cls in (("standin_copy", TinyCopy), ("standin_parity", TinyParity)):
    if _name not in task_names():
        register_task(_name)(_cls)


def config(**over) -> dict:
    """A small pretrain + fine-tune run on the stand-in model and tasks (nested dict)."""
    cfg = {
        "plugins": ["standin_plugin"],
        "device": "cpu",
        "model": {"mixer": "standin", "sequence_aligned": False, "d_model": 8, "dropout": 0.1,
                  "builder": "standin_plugin:build"},
        "checkpoint_every": 5,
        "log_every": 2,
        "pretrain": {"task": "standin_copy", "steps": 12, "batch_size": 8, "eval_every": 4,
                     "optim": {"lr": 1e-2, "warmup_steps": 2}},
        "tasks": [{"task": "standin_parity", "init": "pretrain", "steps": 10, "batch_size": 8,
                   "optim": {"lr": 1e-2, "warmup_steps": 2, "schedule": "cosine"}}],
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    return cfg
