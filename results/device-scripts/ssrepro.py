"""Which causal-SSD launches fault on the GPU at the lab shape? One case per process (faults are sticky).
    PYTHONPATH=. python results/device-scripts/ssrepro.py        # driver: every case in a subprocess
    PYTHONPATH=. python results/device-scripts/ssrepro.py CASE   # one case (lab_mixer_fwd faulted before 5048461)"""
import os, subprocess, sys, torch
CASES = ["lab", "lab_contig", "lab_bq32", "small_batch", "lab_p64", "lab_fwd_only", "qs_lab", "lab_mixer_fwd"]

def one(case):
    from kernels import ssd
    dev = "cuda"
    B, H, L, N, P = 64, 16, 128, 256, 32
    if case == "small_batch": B = 2
    if case == "lab_p64": P = 64
    g = torch.Generator(device=dev).manual_seed(0)
    if case.startswith("lab_mixer"):
        if case == "lab_mixer_bq32":
            orig = ssd.plan_candidates
            ssd.plan_candidates = lambda k, *a, **kw: [p for p in orig(k, *a, **kw) if p.BQ <= 32]
        import mixers
        enc = mixers.MixerEncoder(vocab_size=8192, d_model=256, n_layers=1, mixer="semiseparable",
                                  sequence_aligned=True, max_seq_len=128, mlp_ratio=2, headdim=32, qk_dim=16).to(dev)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = enc(torch.randint(2, 8192, (64, 128), device=dev))
        torch.cuda.synchronize(); print("fwd ok", case, dict(ssd.LAST_PLANS), flush=True)
        from kernels import _ssd_triton as K
        for k, v in K._sweep_kernel.device_caches[0][0].items():
            print("compiled sweep", str(k)[:400], "shared", v.metadata.shared, flush=True)
        y.float().square().sum().backward(); torch.cuda.synchronize(); print("bwd ok", case, flush=True); return
    big = torch.randn(B, L, H * P * 3, device=dev, generator=g, dtype=torch.bfloat16)
    x = big[..., :H * P].view(B, L, H, P).transpose(1, 2)  # strided like a head split
    if case == "lab_contig": x = x.contiguous()
    b = (torch.randn(B, H, L, N, device=dev, generator=g) / 16).to(torch.bfloat16)
    c = (torch.randn(B, 1, L, N, device=dev, generator=g) / 16).to(torch.bfloat16)
    if case == "lab_contig": c = c.expand(B, H, L, N).contiguous()
    la = -0.1 * torch.rand(B, H, L, device=dev, generator=g)
    if case == "lab_bq32":
        orig = ssd.plan_candidates
        ssd.plan_candidates = lambda k, *a, **kw: [p for p in orig(k, *a, **kw) if p.BQ <= 32]
    leaves = [t.requires_grad_() for t in (x.detach(), b, c, la)] if case != "lab_fwd_only" else [x, b, c, la]
    if case == "qs_lab":
        y = ssd.quasiseparable_matmul(leaves[0], leaves[1], leaves[2], leaves[3], torch.ones(B, H, L, device=dev), shift=True)
    else:
        y = ssd.semiseparable_matmul(*leaves)
    torch.cuda.synchronize(); print("fwd ok", case, dict(ssd.LAST_PLANS), flush=True)
    if case != "lab_fwd_only":
        y.float().square().sum().backward(); torch.cuda.synchronize(); print("bwd ok", case, flush=True)

if len(sys.argv) > 1:
    one(sys.argv[1])
else:
    for case in CASES:
        r = subprocess.run([sys.executable, __file__, case], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "CUDA_LAUNCH_BLOCKING": "1"})
        tail = (r.stdout + r.stderr).strip().splitlines()
        print(f"[{case}] rc={r.returncode}", *[l[:300] for l in tail if "ok" in l or "Error" in l][-3:], sep="\n  ", flush=True)
