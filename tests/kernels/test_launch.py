"""kernels._launch: the cache of compiled kernels that skips JITFunction.run on a hit.

Its key must be at least as fine as Triton's own specialization (else a hit could launch a kernel compiled for
other arguments), and a hit must hand the launcher what JITFunction.run would. The first is checked here against
``native_specialize_impl`` (Triton's specializer, importable without a GPU); the second by launch_probe.py, with a
recording stand-in for the CUDA driver (benchmarks/fake_cuda.py), on the real kernels compiled for sm_90.
"""
import itertools
import json
import os
import subprocess
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

triton = pytest.importorskip("triton")
from triton._C.libtriton import native_specialize_impl  # noqa: E402
from triton.backends.nvidia.compiler import CUDABackend  # noqa: E402

from kernels import _launch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def _catalogue():
    vals = []
    for dt in (torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int32, torch.int64):
        base = torch.zeros(64, dtype=dt)
        vals += [base, base[1:], base[2:], base[4:], base[8:], base[16:]]     # aligned and not
        for off in (0, 1):                                                    # a tensor subclass
            param = torch.nn.Parameter(torch.zeros(64, dtype=dt), requires_grad=False)
            param.data = base[off:]
            vals.append(param)
    vals += [0, 1, 2, 3, 15, 16, 17, 32, 48, -1, -16, -17, 2**31 - 16, 2**31 - 1, 2**31, 2**31 + 16, -2**31,
             -2**31 - 1, -2**31 - 16, 2**32, 2**40, 2**63 - 16, 2**63 - 1, 2**63, 2**64 - 16, 2**64 - 1]
    vals += [True, False, 0.0, 1.0, 1.5, -2.0, 16.0, None]
    return vals


def _triton_spec(a):
    return native_specialize_impl(CUDABackend, a, False, True, True)


def test_key_is_at_least_as_fine_as_triton_specialization():
    """Any two arguments with equal keys get equal specializations from Triton (its own specializer on the
    installed version), over tensors of six dtypes at five alignments (and Parameters), integers around every
    boundary Triton distinguishes (1, multiples of 16, the int32 / int64 / uint64 ranges), bools, floats and None;
    keyed alone and among the others."""
    vals = _catalogue()
    keys = list(_launch.key_parts(tuple(vals))[1])
    assert keys == [_launch.key_parts((v,))[1][0] for v in vals]
    specs = [_triton_spec(v) for v in vals]
    for (ka, sa, a), (kb, sb, b) in itertools.combinations(zip(keys, specs, vals), 2):
        if ka == kb:
            assert sa == sb, f"equal keys {ka} but Triton specializes {a!r} as {sa} and {b!r} as {sb}"
    # True, 1 and 1.0 are equal in Python but specialized differently by Triton: the keys keep them apart
    assert len({_launch.key_parts((v,))[1] for v in (True, 1, 1.0)}) == 3


def test_key_parts_pass_tensors_as_addresses():
    t = torch.zeros(8)
    p = torch.nn.Parameter(torch.zeros(8))
    values, spec = _launch.key_parts((t, p, 3, None, 1.5))
    assert values == (t.data_ptr(), p, 3, None, 1.5)      # the subclass goes to the launcher as it is
    assert spec[0] == (torch.float32, t.data_ptr() % 16 == 0)
    # keyed by dtype and alignment too: model.half() swaps a Parameter's data in place, the object stays
    p.data = torch.zeros(9, dtype=torch.float16)[1:]
    assert _launch.key_parts((p,))[1] != spec[1:2]


def test_launch_outside_jit_functions_takes_the_ordinary_path():
    """Interpreted kernels (and anything not a plain JITFunction) are launched as kernel[grid](...)."""
    seen = []

    class Fake:
        pre_run_hooks = []

        def __getitem__(self, grid):
            return lambda *a, **k: seen.append((grid, a, k)) or "ran"

    assert _launch.launch(Fake(), (3,), 1, 2, X=4) == "ran"
    assert seen == [((3,), (1, 2), {"X": 4})]


@pytest.mark.slow
def test_cached_launch_matches_jit_run_on_the_real_kernels():
    """Every launch of the Chebyshev and exp-sum products (fwd+bwd; bf16 and float32; aligned and misaligned inputs;
    L = 1, odd L; broadcast q), of the exact tiled Cauchy product (bf16) and of the scans (quasiseparable with shared
    and separate generators, semiseparable; bf16 and float32, odd L), each compiled for sm_90: the cached path
    returns the very kernel JITFunction.run picks and hands its launcher the same arguments, without entering
    JITFunction.run (launch_probe.py)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["MIXERZOO_DIRECT_LAUNCH"] = "1"
    r = subprocess.run([sys.executable, os.path.join(HERE, "launch_probe.py")], env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["mismatches"] == []
    assert out["launches"] >= 50 and out["hits"] == out["launches"]


@pytest.mark.slow
def test_host_launch_benchmark_runs_without_a_gpu(tmp_path):
    """`mixerzoo bench host_launch --device cpu` (the stand-in driver): JSON with every launch of both products'
    fwd+bwd timed both ways, the products themselves and the do-nothing floor, plus the plot."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-m", "ablations.cli", "bench", "host_launch", "--device", "cpu", "--out",
                        str(tmp_path), "-n", "5"], env=env, capture_output=True, text=True, timeout=600,
                       cwd=os.path.join(HERE, "..", ".."))
    assert r.returncode == 0, r.stderr[-3000:]
    with open(tmp_path / "host_launch-cpu.json") as f:
        out = json.load(f)
    assert (tmp_path / "host_launch-cpu.png").stat().st_size > 0
    assert "fake_cuda" in out["device"] and out["versions"]["triton"] == triton.__version__
    rows = out["results"]
    for kind in ("vandermonde", "cauchy"):
        assert sum(r["what"] == "one launch" and r["name"].startswith(kind) for r in rows) == 6
        assert {f"{kind}: forward", f"{kind}: forward+backward"} <= {r["name"] for r in rows}
    assert all(r["jit_us"] > 0 and r["cached_us"] > 0 for r in rows)


def test_eager_target_measurement_runs(monkeypatch):
    """benchmarks.host_launch._eager_medians (GPU only; the next device session's check of the L = 512 target) on
    the CPU: tiny shapes under the interpreter, do_bench and the graph replay stood in by one call each. Its record:
    five medians with the cache on and off, the replay, and the speed-ups over the paper's committed median."""
    from triton import testing

    import kernels._launch as kl
    from benchmarks import host_launch, kernels_matfree as km
    plain_inputs = km._inputs
    monkeypatch.setattr(km, "SHAPES", km.SMOKE_SHAPES)
    monkeypatch.setattr(km, "_inputs", lambda kind, L, device, *a: plain_inputs(kind, 16, "cpu", *a))
    monkeypatch.setattr(km, "_warm_up_clocks", lambda: None)
    monkeypatch.setattr(km, "_graph_time", lambda fn, do_bench: (fn(), 1.0)[1])
    monkeypatch.setattr(testing, "do_bench", lambda fn, **kw: (fn(), 2.0)[1])
    out = host_launch._eager_medians(kl)
    assert kl.DIRECT
    with open(host_launch.PAPER_JSON) as f:
        paper = {r["kind"]: r["fwd_bwd_ms"] for r in json.load(f)["results"]
                 if r["method"] == "materialize" and r["L"] == 512}
    for kind, method in (("cauchy", "expsum_triton"), ("vandermonde", "chebyshev")):
        rec = out[kind]
        assert rec["method"] == method and rec["cache_on_ms"] == [2.0] * 5 and rec["cache_off_ms"] == [2.0] * 5
        assert rec["graph_ms"] == 1.0 and rec["paper_fwd_bwd_ms"] == paper[kind]
        assert rec["cache_on_speedup"] == [paper[kind] / 2.0] * 5 and rec["graph_speedup"] == paper[kind]
