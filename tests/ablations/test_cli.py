"""The mixerzoo command line: list, check, ablate, report, bench; help texts and exit codes."""
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

import standin_plugin
from ablations import cli

HERE = Path(__file__).parent


def run_cli(argv, capsys):
    rc = cli.main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_help_documents_exit_codes():
    for argv in ([], ["ablate"], ["check"], ["report"], ["bench"], ["list"]):
        res = subprocess.run([sys.executable, "-m", "ablations.cli", *argv, "--help"], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        assert "exit codes" in res.stdout and "130" in res.stdout
    res = subprocess.run([sys.executable, "-m", "ablations.cli", "frobnicate"], capture_output=True, text=True)
    assert res.returncode == 2 and "invalid choice" in res.stderr


def test_list(capsys):
    structured = pytest.importorskip("structured")
    mixers = pytest.importorskip("mixers")
    rc, out, _ = run_cli(["list"], capsys)
    assert rc == 0
    for section in ("Structured classes", "Mixers", "Grids", "Tasks", "Scales"):
        assert section in out
    for name in structured.names():
        assert f"  {name} " in out and structured.get(name).property_name in out
    for name, params in mixers.names().items():
        assert any(ln.split()[:1] == [name] and ", ".join(params) in ln for ln in out.splitlines())
    for grid in ("table2", "table3", "smoke"):
        assert f"  {grid} " in out
    for scale in ("smoke", "lab", "paper"):
        assert f"  {scale} " in out


def test_list_params(capsys):
    mixers = pytest.importorskip("mixers")
    rc, out, _ = run_cli(["list", "--params"], capsys)
    assert rc == 0
    rows = mixers.param_table()
    for r in rows:
        kind = "sequence_aligned" if r["sequence_aligned"] else "fixed"
        assert any(ln.split()[:3] == [r["mixer"], kind, f"{r['params']:,d}"] for ln in out.splitlines())


def test_check_passes_and_fails(capsys):
    structured = pytest.importorskip("structured")
    rc, out, _ = run_cli(["check", "low_rank", "--length", "7", "--count", "2"], capsys)
    assert rc == 0 and out.count("[PASS]") == 2 and "2/2 instance(s)" in out

    base = structured.get("low_rank")

    class UnderstatedRank(base):
        """A low-rank matrix that claims rank 1 while its factors have rank up to L: its check must fail."""

        @property
        def order(self):
            return 1

    structured.register("zz_understated_rank")(UnderstatedRank)
    try:
        rc, out, _ = run_cli(["check", "zz_understated_rank", "--length", "6", "--order", "4", "--count", "1"], capsys)
        assert rc == 1 and "[FAIL]" in out and "0/1 instance(s)" in out
    finally:
        structured._REGISTRY.pop("zz_understated_rank", None)
    rc, _, err = run_cli(["check", "no_such_class"], capsys)
    assert rc == 2 and "unknown structured class 'no_such_class'" in err and "low_rank" in err
    rc, _, err = run_cli(["check", "low_rank", "--length", "0"], capsys)
    assert rc == 2 and "--length must be in 1..1024" in err


def _grid_file(tmp_path, poison=False):
    base = standin_plugin.config()
    data = {"name": "mini", "base": base, "axes": {"model.d_model": [4, 8]}}
    if poison:
        data["include"] = [{"model.d_model": 6, "model.mixer_kwargs": {"poison_step": 2}}]
    p = tmp_path / "mini.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_ablate_and_report(tmp_path, capsys):
    grid = _grid_file(tmp_path)
    out = tmp_path / "out"
    rc, text, _ = run_cli(["ablate", str(grid), "--dry-run"], capsys)
    assert rc == 0 and "2 run(s)" in text
    rc, text, _ = run_cli(["ablate", str(grid), "--out", str(out), "--jobs", "1", "--no-progress"], capsys)
    assert rc == 0
    assert text.count(" ok (") == 2 and "| Structure |" in text and "2/2 run(s) completed" in text
    assert (out / "table.md").exists()
    rc, text, _ = run_cli(["ablate", str(grid), "--out", str(out), "--jobs", "1", "--no-progress"], capsys)
    assert rc == 0 and text.count("[skipped: already completed]") == 2
    rc, text, err = run_cli(["report", str(out), "--format", "latex", "--plots"], capsys)
    assert rc == 0 and text.startswith("\\begin{tabular}")
    for name in ("table.md", "table.csv", "table.tex", "plots/val_loss.png", "plots/scores.png"):
        assert (out / name).exists(), name
    assert not (out / "plots" / "delta.png").exists()  # no mixer with both parameterizations in this grid
    rc, text, _ = run_cli(["report", str(out), "--format", "csv"], capsys)
    assert rc == 0 and text.splitlines()[0].startswith("Structure,mixer,Seq.-aligned,#Params")
    rc, _, err = run_cli(["report", str(tmp_path / "missing")], capsys)
    assert rc == 2 and "not a directory" in err


def test_ablate_failed_run_exits_1(tmp_path, capsys):
    grid = _grid_file(tmp_path, poison=True)
    rc, text, _ = run_cli(["ablate", str(grid), "--out", str(tmp_path / "o"), "--jobs", "1", "--no-progress",
                           "--filter", "model.d_model=6"], capsys)
    assert rc == 1 and "FAILED" in text and "non-finite" in text and "0/1 run(s) completed" in text


def test_ablate_spec_errors_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"base": {"tasks": [{"task": "mlm", "stepz": 1}]}}))
    rc, _, err = run_cli(["ablate", str(bad), "--dry-run"], capsys)
    assert rc == 2 and "tasks[0].stepz" in err and "allowed fields" in err
    rc, _, err = run_cli(["ablate", "no_such_grid"], capsys)
    assert rc == 2 and "unknown grid 'no_such_grid'" in err and "table2" in err
    rc, _, err = run_cli(["ablate", str(_grid_file(tmp_path)), "--filter", "model.colour=red", "--dry-run"], capsys)
    assert rc == 2 and "model.colour" in err
    with pytest.raises(SystemExit) as e:
        cli.main(["ablate", "smoke", "--jobs", "0"])
    assert e.value.code == 2


def test_table2_smoke_dry_run_lists_every_row(capsys):
    pytest.importorskip("mixers")
    rc, out, _ = run_cli(["ablate", "table2", "--scale", "smoke", "--dry-run"], capsys)
    assert rc == 0 and "14 run(s)" in out


def test_bench_dispatch_and_missing_module(monkeypatch, capsys):
    seen = {}
    fake = types.ModuleType("benchmarks.kernels")
    fake.main = lambda argv: seen.setdefault("argv", argv) and 0
    monkeypatch.setitem(sys.modules, "benchmarks.kernels", fake)
    rc, _, _ = run_cli(["bench", "kernels", "--device", "cpu", "--quick"], capsys)
    assert rc == 0 and seen["argv"] == ["--device", "cpu", "--quick"]

    real_import = cli.importlib.import_module

    def missing(name, *a):
        if name == "benchmarks.structured":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *a)

    monkeypatch.setattr(cli.importlib, "import_module", missing)
    rc, _, err = run_cli(["bench", "structured"], capsys)
    assert rc == 3 and "benchmarks.structured is not installed" in err


def test_bench_blocks_quick(tmp_path, capsys):
    pytest.importorskip("mixers")
    rc, out, _ = run_cli(["bench", "blocks", "--quick", "--lengths", "16", "--mixers", "low_rank,dense",
                          "--out", str(tmp_path), "--no-progress"], capsys)
    assert rc == 0
    data = json.loads((tmp_path / "blocks-cpu-quick.json").read_text())
    got = {(r["mixer"], r["sequence_aligned"]) for r in data["results"]}
    assert got == {("low_rank", False), ("low_rank", True), ("dense", False)}
    assert all(r["time_s"] > 0 and r["L"] == 16 for r in data["results"])
    assert (tmp_path / "blocks-cpu-quick.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit) as e:               # 0 is not silently replaced by the default
        cli.main(["bench", "blocks", "--quick", "--batch", "0", "--out", str(tmp_path)])
    assert e.value.code == 2 and "--batch must be a positive integer, got 0" in capsys.readouterr().err


def test_list_into_a_closed_pipe_exits_cleanly():
    # `mixerzoo list | head -1`: the reader leaves early; that is not a failure and prints no traceback
    import subprocess
    import sys
    proc = subprocess.Popen([sys.executable, "-m", "ablations.cli", "list"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert "Traceback" not in err


def test_filter_alternatives_select_either_value():
    from ablations import grid as grid_mod, runner
    specs = grid_mod.expand("table2", scale="smoke")
    both = runner.filter_specs(specs, ["model.mixer=toeplitz|cauchy", "model.sequence_aligned=true"])
    assert sorted(s.config.model.mixer for s in both) == ["cauchy", "toeplitz"]
    assert all(s.config.model.sequence_aligned for s in both)
    with pytest.raises(ValueError, match="selects no run"):
        runner.filter_specs(specs, ["model.mixer=toeplitz|nope", "model.mixer=cauchy"])
