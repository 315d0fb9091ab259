"""The kernel dispatch hook of the SSD-based classes, and the structured benchmark's quick mode."""
from __future__ import annotations

import json
import math

import pytest
import torch

import kernels
import structured
from benchmarks import structured as bench


@pytest.mark.parametrize("name", ["semiseparable", "quasiseparable"])
def test_fast_matmul_dispatches_to_kernels_with_expanded_params(name, gen, monkeypatch, rel_err):
    """With kernels enabled, the product goes to kernels.<fn> with parameters expanded to x's batch dims
    and cast to x's dtype (here a spy that answers with the torch algorithm)."""
    M = structured.get(name).random(10, batch_shape=(3, 1), dtype=torch.float64, generator=gen)
    x = torch.randn(4, 10, 2, generator=gen, dtype=torch.float64).float()
    calls = []

    def spy(x_, *params):
        calls.append((x_, params))
        tensors = [p for p in params if isinstance(p, torch.Tensor)]
        assert all(p.shape[:2] == x_.shape[:2] == (3, 4) and p.dtype == x_.dtype for p in tensors)
        return torch.zeros_like(x_)

    monkeypatch.setattr(kernels, "enabled", lambda t, **kw: True)
    monkeypatch.setattr(kernels, f"{name}_matmul", spy)
    y = M.matmul(x)
    assert len(calls) == 1 and y.shape == (3, 4, 10, 2) and not y.any()
    if name == "quasiseparable":
        assert calls[0][1][-1] is True  # shift is passed last
    monkeypatch.setattr(kernels, "enabled", lambda t, **kw: False)
    assert rel_err(M.matmul(x), M.matmul(x, method="explicit")) <= 1e-5


def test_fit_exponent():
    Ls = [512, 1024, 2048, 4096, 8192, 16384]
    assert bench.fit_exponent(Ls, [3e-9 * L ** 1.5 for L in Ls]) == pytest.approx(1.5)
    # Only 1024 <= L <= 16384 enter the fit.
    assert bench.fit_exponent(Ls, [1.0] + [2.0 * L for L in Ls[1:]]) == pytest.approx(1.0)
    assert bench.fit_exponent([256, 512], [1.0, 2.0]) is None


def test_quick_run_writes_json_and_png(tmp_path):
    path = bench.main(["--device", "cpu", "--out", str(tmp_path), "--lengths", "8,16", "--quick"])
    with open(path) as f:
        result = json.load(f)
    assert path.endswith("structured-cpu-quick.json") and (tmp_path / "structured-cpu-quick.png").exists()
    assert {"device", "versions", "command", "timestamp", "config", "summary", "records"} <= set(result)
    assert result["versions"]["torch"] == torch.__version__
    seen = {(r["class"], r["method"], r["L"]) for r in result["records"]}
    for name in structured.names():
        for method in ("fast", "explicit"):
            assert {(name, method, 8), (name, method, 16)} <= seen
    assert all(r["median_s"] > 0 and r["peak_bytes"] >= 0 and not math.isnan(r["median_s"]) for r in result["records"])


def test_bad_arguments():
    with pytest.raises(ValueError, match="dtype must be one of"):
        bench.run(dtype="int8")
    with pytest.raises(ValueError, match="lengths must be positive ints"):
        bench.run(lengths=[0])
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda"):
        bench.run(device="tpu9")
    with pytest.raises(SystemExit):
        bench.main(["--lengths", "abc"])
