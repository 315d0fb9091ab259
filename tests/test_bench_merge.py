"""benchmarks.kernels_matfree --merge: results of separate device calls combine into one JSON and plot."""
import json

import pytest

from benchmarks import kernels_matfree as mf


def _run(path, command, rows, accuracy, device="GPU X", shapes=None):
    payload = {"command": command, "device": device, "smoke": False, "shapes": shapes or dict(mf.SHAPES),
               "versions": {"torch": "t"}, "results": rows, "accuracy_vs_float64": accuracy}
    path.write_text(json.dumps(payload))
    return str(path)


def _row(kind, method, L, ms):
    return {"kind": kind, "method": method, "L": L, "fwd_ms": ms, "fwd_bwd_ms": 3 * ms, "peak_extra_mb": L / 8}


def test_merge_takes_each_method_from_the_last_file_and_recomputes_targets(tmp_path):
    a = _run(tmp_path / "a.json", "run a", [_row("cauchy", "triton", 512, 1.0), _row("cauchy", "materialize", 512, 30.0),
                                             _row("vandermonde", "triton", 512, 9.0), _row("sdpa", "sdpa", 512, 0.5),
                                             _row("vandermonde", "materialize", 512, 7.0)],
             {"cauchy": {"L": 512}, "vandermonde": {"L": 512, "triton": {"e": 1}, "materialize": {"e": 2}}})
    b = _run(tmp_path / "b.json", "run b", [_row("vandermonde", "triton", 512, 2.0),      # a --methods re-run
                                             _row("vandermonde", "materialize", 512, 8.0)],
             {"vandermonde": {"L": 512, "triton": {"e": 3}}})
    c = _run(tmp_path / "c.json", "run c", [_row("vandermonde", "triton", 512, 2.0)], {})
    json_path, png_path = mf.merge([a, b, c], str(tmp_path / "out"))
    out = json.loads(open(json_path).read())
    got = {(r["kind"], r["method"]): r["fwd_ms"] for r in out["results"]}
    assert got == {("cauchy", "triton"): 1.0, ("cauchy", "materialize"): 30.0, ("sdpa", "sdpa"): 0.5,
                   ("vandermonde", "triton"): 2.0, ("vandermonde", "materialize"): 8.0}
    assert len(out["results"]) == 5
    assert out["accuracy_vs_float64"]["vandermonde"] == {"L": 512, "triton": {"e": 3}, "materialize": {"e": 2}}
    assert out["command"] == "run a ; run b ; run c"
    tgt = out["targets"]["vandermonde"]["triton"]
    assert tgt[next(k for k in tgt if k.startswith("speedup_vs_materialize") and k.endswith("fwd"))] == 4.0
    assert tgt[next(k for k in tgt if k.startswith("slowdown_vs_sdpa") and "fwd_bwd" in k)] == 4.0  # 6 / 1.5
    assert (tmp_path / "out" / "kernels_matfree.png").stat().st_size > 0 and png_path.endswith(".png")


def test_merge_refuses_different_devices(tmp_path):
    a = _run(tmp_path / "a.json", "a", [_row("sdpa", "sdpa", 512, 1.0)], {})
    b = _run(tmp_path / "b.json", "b", [_row("sdpa", "sdpa", 512, 1.0)], {}, device="GPU Y")
    with pytest.raises(ValueError, match="differ in 'device'"):
        mf.merge([a, b], str(tmp_path / "out"))
