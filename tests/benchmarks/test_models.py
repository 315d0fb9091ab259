"""`mixerzoo bench models` on the CPU: tiny models, every cell measured or recorded with its failure."""
from __future__ import annotations

import json

import pytest

from benchmarks import models


def test_quick_run_measures_every_cell_and_writes_json_and_plot(tmp_path):
    rc = models.main(["--quick", "--out", str(tmp_path), "--steps", "1",
                      "--rows", "quasiseparable-sa,attention-sa,dense-fixed,bidir_concat-sa"])
    assert rc == 0
    data = json.loads((tmp_path / "models-cpu-quick.json").read_text())
    assert (tmp_path / "models-cpu-quick.png").stat().st_size > 0
    cells = data["cells"]
    assert [(c["row"], c["L"]) for c in cells] == [(r, L) for r in ("quasiseparable-sa", "attention-sa", "dense-fixed",
                                                                     "bidir_concat-sa") for L in (32, 64)]
    for c in cells:
        assert c["status"] == "ok" and c["tokens_per_s"] > 0 and c["batch"] == 256 // c["L"]
    assert "| quasiseparable-sa |" in models.table(data)


def test_a_failing_cell_is_recorded_and_the_rest_go_on(tmp_path, monkeypatch):
    real = models.build

    def build(row, length, cfg, d_state):
        if row == "low_rank-sa" and length == 32:
            raise RuntimeError("boom")
        return real(row, length, cfg, d_state)

    monkeypatch.setattr(models, "build", build)
    rc = models.main(["--quick", "--out", str(tmp_path), "--steps", "1", "--rows", "low_rank-sa"])
    assert rc == 1
    cells = json.loads((tmp_path / "models-cpu-quick.json").read_text())["cells"]
    assert cells[0]["status"] == "error" and "boom" in cells[0]["error"]
    assert cells[1]["status"] == "ok"


@pytest.mark.parametrize("argv,match", [
    (["--rows", "nosuch-sa"], "unknown row"),
    (["--rows", "dense-sa"], "supports only fixed"),
    (["--lengths", "0"], "--lengths"),
    (["--tokens", "0"], "--tokens"),
    (["--headdim", "7"], "--headdim"),
    (["--chunk-size", "0"], "--chunk-size must be a positive integer or 'seq', got '0'"),
    (["--chunk-size", "whole"], "--chunk-size must be a positive integer or 'seq', got 'whole'"),
])
def test_bad_arguments_are_one_line_usage_errors(argv, match, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        models.main(["--quick", "--out", str(tmp_path)] + argv)
    assert e.value.code == 2
    assert match in capsys.readouterr().err


def test_peer_rows_need_their_packages(monkeypatch):
    import importlib.util
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    rows, missing = models.rows_available(["bert-base", "paper-hydra", "toeplitz-sa"])
    assert rows == ["toeplitz-sa"]
    assert "transformers" in missing["bert-base"] and "paper" in missing["paper-hydra"]


def test_resume_measures_only_the_missing_and_failed_cells(tmp_path, monkeypatch):
    real, calls, broken = models.measure, [], [True]

    def measure(row, L, *a, **k):
        calls.append((row, L))
        if row == "dense-fixed" and L == 64 and broken[0]:
            raise RuntimeError("cut short")
        return real(row, L, *a, **k)

    monkeypatch.setattr(models, "measure", measure)
    argv = ["--quick", "--out", str(tmp_path), "--steps", "1", "--rows", "quasiseparable-sa,dense-fixed"]
    assert models.main(argv) == 1
    first = json.loads((tmp_path / "models-cpu-quick.json").read_text())["cells"]
    calls.clear()
    broken[0] = False
    assert models.main(argv + ["--resume"]) == 0
    assert calls == [("dense-fixed", 64)]
    cells = json.loads((tmp_path / "models-cpu-quick.json").read_text())["cells"]
    assert [(c["row"], c["L"], c["status"]) for c in cells] == [
        ("quasiseparable-sa", 32, "ok"), ("quasiseparable-sa", 64, "ok"), ("dense-fixed", 32, "ok"),
        ("dense-fixed", 64, "ok")]
    assert cells[:3] == first[:3]  # kept as measured


def test_resume_refuses_a_file_of_another_configuration(tmp_path, capsys):
    argv = ["--quick", "--out", str(tmp_path), "--steps", "1", "--rows", "dense-fixed", "--lengths", "32"]
    assert models.main(argv) == 0
    with pytest.raises(SystemExit) as e:
        models.main(argv[:-2] + ["--lengths", "32", "--tokens", "128", "--resume"])
    assert e.value.code == 2
    assert "another configuration (differs in tokens_per_step)" in capsys.readouterr().err


def test_compile_layers_compiles_each_repeated_layer(tmp_path, monkeypatch):
    """--compile layers: every module of every nn.ModuleList goes through torch.compile on its own (here with the
    aot_eager backend, no C++ toolchain needed) and the cells are measured."""
    import torch
    compiled, real = [], torch.compile

    def spy(fn, *a, **k):
        compiled.append(type(getattr(fn, "__self__", fn)).__name__)
        return real(fn, backend="aot_eager")

    monkeypatch.setattr(torch, "compile", spy)
    rc = models.main(["--quick", "--out", str(tmp_path), "--steps", "1", "--rows", "quasiseparable-sa",
                      "--lengths", "32", "--compile", "layers"])
    assert rc == 0
    # the benchmark's models have no MLP: 2 layers, each a norm and a block
    assert sorted(compiled) == ["LayerNorm", "LayerNorm", "MatrixMixerBlock", "MatrixMixerBlock"]
    cell = json.loads((tmp_path / "models-cpu-quick.json").read_text())["cells"][0]
    assert cell["status"] == "ok" and cell["tokens_per_s"] > 0


@pytest.mark.parametrize("given,want", [("8", {32: 8, 64: 8}), ("seq", {32: 32, 64: 64})])
def test_chunk_size_reaches_the_products_and_is_recorded(given, want, tmp_path, monkeypatch):
    """--chunk-size sets the chunk of every structured class with one while each cell runs ('seq': the cell's L),
    puts it in the JSON's configuration, and leaves the defaults as they were."""
    import structured
    from structured.quasiseparable import Quasiseparable
    from structured.semiseparable import Semiseparable
    seen, real = {}, Quasiseparable.matmul

    def spy(self, x, *a, **k):
        seen.setdefault(self.length, set()).add((Quasiseparable.chunk_size, Semiseparable.chunk_size))
        return real(self, x, *a, **k)

    monkeypatch.setattr(Quasiseparable, "matmul", spy)
    defaults = {n: structured.get(n).chunk_size for n in structured.names() if hasattr(structured.get(n), "chunk_size")}
    assert models.main(["--quick", "--out", str(tmp_path), "--steps", "1", "--rows", "quasiseparable-sa",
                        "--chunk-size", given]) == 0
    assert seen == {L: {(q, q)} for L, q in want.items()}
    data = json.loads((tmp_path / "models-cpu-quick.json").read_text())
    assert data["config"]["chunk_size"] == (given if given == "seq" else int(given))
    assert all(c["status"] == "ok" for c in data["cells"])
    assert {n: structured.get(n).chunk_size for n in defaults} == defaults
