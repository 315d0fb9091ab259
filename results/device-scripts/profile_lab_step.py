"""Where one training step of the lab model goes on a GPU, per mixer: d_model 256, 4 layers, headdim 32,
qk_dim 16 (d_state 256 for the SSM mixers), batch 64, L 128, bf16 autocast, fwd + bwd + AdamW.

Prints steps/s for each mixer and, for the slow ones, the top CUDA kernels by self time
(torch.profiler), and the scan plans and operand dtypes that reached kernels.ssd.

    PYTHONPATH=. python results/device-scripts/profile_lab_step.py [--mixers quasiseparable,attention]
"""
import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

import mixers
from kernels import ssd

ap = argparse.ArgumentParser()
ap.add_argument("--mixers", default="attention,quasiseparable,semiseparable,bidir_add,toeplitz,cauchy,vandermonde")
ap.add_argument("--steps", type=int, default=20)
ap.add_argument("--profile-top", type=int, default=18)
ap.add_argument("--like-trainer", action="store_true",
                help="step like ablations.trainer: an (all-real) attention mask, the head on 15%% of positions "
                     "(positions=), gradient clipping; each adds host syncs the plain step does not have")
ap.add_argument("--tuning", nargs="*", default=[], metavar="KEY=VALUE",
                help="override kernels.ssd.TUNING entries, e.g. bwd_split=True bwd_split_launch=per_role")
args = ap.parse_args()
dev = torch.device("cuda")
for kv in args.tuning:
    key, value = kv.split("=", 1)
    if key not in ssd.TUNING:
        raise SystemExit(f"--tuning: {key!r} is not one of {sorted(ssd.TUNING)}")
    ssd.TUNING[key] = {"True": True, "False": False}.get(value, int(value) if value.isdigit() else value)

seen = []
_orig = ssd._run_planned


def _spy(kernels, N, P, dtype, chunk, device, run, backward=False):
    seen.append((kernels, N, P, str(dtype), chunk))
    return _orig(kernels, N, P, dtype, chunk, device, run, backward=backward)


ssd._run_planned = _spy
for name in args.mixers.split(","):
    torch.manual_seed(0)
    enc = mixers.MixerEncoder(vocab_size=8192, d_model=256, n_layers=4, mixer=name, sequence_aligned=True,
                              max_seq_len=128, mlp_ratio=2, headdim=32, qk_dim=16)
    model = mixers.MixerForMaskedLM(enc).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    ids = torch.randint(2, 8192, (64, 128), device=dev)

    mask = torch.ones_like(ids, dtype=torch.bool)
    keep = torch.rand(ids.shape, device=dev) < 0.15

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            if args.like_trainer:
                logits = model(ids, mask, positions=keep)
                loss = torch.nn.functional.cross_entropy(logits.float(), ids[keep])
            else:
                logits = model(ids)
                loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), ids.flatten())
        loss.backward()
        if args.like_trainer:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    seen.clear()
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize()
    sps = args.steps / (time.perf_counter() - t)
    print(f"== {name} {' '.join(args.tuning)}: {sps:.1f} steps/s, peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GB; scan calls (first 4): {sorted(set(seen))[:4]}; plans {dict(ssd.LAST_PLANS)}",
          flush=True)
    if sps < 15:
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(2):
                step()
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=args.profile_top,
                                        max_name_column_width=70), flush=True)
    del model, opt
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
