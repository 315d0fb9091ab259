"""CPU profile of 200 masked-LM training steps of a tiny model (1 layer, d_model 32) at vocab 8192, L 128,
batch 64, one thread: where a small model's step goes. ``--full-head`` applies the vocabulary head at every
position (the trainer's behaviour before it learned to score only the masked positions).

    python results/device-scripts/profile_mlm_head.py [--full-head]
"""
import argparse
import cProfile
import pstats

import torch

from ablations.config import run_config_from_dict
from ablations.runner import build_model, build_task
from ablations.trainer import train_stage

ap = argparse.ArgumentParser()
ap.add_argument("--full-head", action="store_true")
args = ap.parse_args()
torch.set_num_threads(1)
cfg = run_config_from_dict({
    "seed": 0, "device": "cpu", "checkpoint_every": 0, "log_every": 10,
    "model": {"d_model": 32, "n_layers": 1, "headdim": 16, "qk_dim": 8, "expand": 2, "mlp_ratio": 2,
              "mixer": "toeplitz", "sequence_aligned": True},
    "pretrain": {"task": "mlm", "options": {"corpus": "builtin", "seq_len": 128, "vocab_size": 8192}, "steps": 200,
                 "batch_size": 64, "eval_every": 0, "eval_batch_size": 128, "optim": {"lr": 1e-3, "warmup_steps": 10}}})
task = build_task(cfg.pretrain)
model = build_model(cfg.model, task, cfg.pretrain, task.seq_len)
model.predicts_selected = not args.full_head
prof = cProfile.Profile()
prof.enable()
train_stage(model, task, cfg.pretrain, seed=0, device=torch.device("cpu"), precision="fp32")
prof.disable()
pstats.Stats(prof).sort_stats("cumulative").print_stats(12)
