"""The lab model's quasiseparable shapes (d_state 256, headdim 32, 16 heads, L 128) through the kernels,
fwd + bwd in bf16 and float32, against the float64 torch reference."""
import torch
from kernels.ssd import quasiseparable_matmul
from structured.quasiseparable import Quasiseparable
torch.manual_seed(0)
B, H, L, P, N = 4, 16, 128, 32, 256
for shift in (True, False):
    for dt in (torch.bfloat16, torch.float32):
        x = torch.randn(B, H, L, P, device="cuda", dtype=dt, requires_grad=True)
        b = (torch.randn(B, 1, L, N, device="cuda") / N ** 0.5).to(dt).requires_grad_()
        c = torch.randn(B, 1, L, N, device="cuda", dtype=dt, requires_grad=True)
        la = (-torch.rand(B, H, L, device="cuda")).requires_grad_()
        d = torch.randn(B, H, L, device="cuda", requires_grad=True)
        y = quasiseparable_matmul(x, b.expand(B, H, L, N), c.expand(B, H, L, N), la, d, shift=shift)
        y.float().square().sum().backward()
        g = [t.grad.double() for t in (x, b, c, la, d)]
        # float64 reference on the CPU (the planner has no float64 launch at N=256 on an H100)
        xs = [t.detach().cpu().double().requires_grad_() for t in (x, b, c, la, d)]
        bx, cx = xs[1].expand(B, H, L, N), xs[2].expand(B, H, L, N)  # torch algorithm of structured/ (CPU)
        yr = Quasiseparable(bx, cx, xs[3], xs[4], b_bwd=bx, c_bwd=cx, log_a_bwd=xs[3], shift=shift).matmul(xs[0])
        yr.square().sum().backward()
        err = (y.double().cpu() - yr).abs().max().item() / yr.abs().max().item()
        gerr = max(((a.cpu() - t.grad).abs().max() / t.grad.abs().max()).item() for a, t in zip(g, xs))
        print(f"QS shift={shift} {dt}: fwd rel err {err:.2e}, grad rel err {gerr:.2e}")
        assert err < (3e-2 if dt == torch.bfloat16 else 1e-4) and gerr < (1e-1 if dt == torch.bfloat16 else 1e-3)
print("precheck ok")
