"""Provenance: code fingerprints in results, stale runs warned about and rerun on request, unreadable
summaries reported by path and never dropped."""
import json

import pytest

import standin_plugin
from ablations import cli, provenance, report, runner
from ablations.config import run_config_from_dict
from ablations.grid import RunSpec, run_id
from test_report import _write_runs


def spec(**over):
    c = run_config_from_dict(standin_plugin.config(**over))
    return RunSpec(run_id=run_id(c), config=c, point={})


def test_runs_record_the_code_fingerprint(tmp_path):
    s = spec()
    res = runner.run_grid([s], tmp_path, progress=False, echo=lambda *_: None)[0]
    fp = provenance.fingerprint()
    assert res["code"] == fp and len(fp["source_hash"]) == 16
    conf = json.loads((tmp_path / s.run_id / "config.json").read_text())
    assert conf["code"]["source_hash"] == fp["source_hash"]


def test_source_hash_follows_the_sources(tmp_path, monkeypatch):
    pkg = tmp_path / "ablations"
    pkg.mkdir()
    (pkg / "a.py").write_text("x = 1\n")
    monkeypatch.setattr(provenance, "_package_dirs", lambda: [("ablations", pkg)])
    provenance.source_hash.cache_clear()
    try:
        h1 = provenance.source_hash()
        provenance.source_hash.cache_clear()
        (pkg / "a.py").write_text("x = 2\n")
        assert provenance.source_hash() != h1
    finally:
        provenance.source_hash.cache_clear()


def test_stale_runs_are_warned_about_and_rerun_on_request(tmp_path):
    """A finished run made by other code is reused with a warning, or rerun with --rerun-stale."""
    s = spec(seed=3)
    runner.run_grid([s], tmp_path, progress=False, echo=lambda *_: None)
    p = tmp_path / s.run_id / "summary.json"
    old = json.loads(p.read_text())
    old["code"]["source_hash"] = "0123456789abcdef"
    p.write_text(json.dumps(old))
    warnings = []
    again = runner.run_grid([s], tmp_path, progress=False, echo=lambda *_: None, warn=warnings.append)
    assert again[0]["skipped"]
    assert len(warnings) == 1 and "made by other code" in warnings[0] and "0123456789abcdef" in warnings[0]
    assert "--rerun-stale" in warnings[0]
    warnings.clear()
    fresh = runner.run_grid([s], tmp_path, progress=False, echo=lambda *_: None, warn=warnings.append,
                            rerun_stale=True)
    assert not fresh[0].get("skipped") and fresh[0]["status"] == "completed" and not warnings
    assert fresh[0]["code"]["source_hash"] == provenance.source_hash()
    kept = tmp_path / s.run_id / "stale-0123456789abcdef"
    assert json.loads((kept / "summary.json").read_text())["code"]["source_hash"] == "0123456789abcdef"
    assert (kept / "ckpt").is_dir()


def test_report_flags_rows_that_mix_code_versions(tmp_path):
    _write_runs(tmp_path)
    for seed, h in ((0, "aaaa"), (1, "bbbb")):
        p = tmp_path / f"toeplitz-sa-s{seed}-0000" / "summary.json"
        d = json.loads(p.read_text())
        d["code"] = {"source_hash": h}
        p.write_text(json.dumps(d))
    df = report.build_table(tmp_path)
    row = df[(df.mixer == "toeplitz") & df["Seq.-aligned"]].iloc[0]
    assert row["Status"].startswith("mixed code (2 versions)")
    assert all(not s.startswith("mixed") for s in df[df.mixer != "toeplitz"]["Status"])
    assert "versions of the code" in report.format_table(df, "md")


@pytest.mark.parametrize("content, cause", [
    ('{"run_id": "x", "status": "compl', "not valid JSON"),
    ("[]", "a JSON list"),
    ('{"status": "completed"}', "missing key(s) run_id, mixer, sequence_aligned"),
])
def test_unreadable_summaries_are_reported_by_path(tmp_path, capsys, content, cause):
    """Unreadable summaries (truncated, [], missing keys) are reported by path and counted as failed runs."""
    _write_runs(tmp_path)
    bad = tmp_path / "cauchy-sa-s0-0000" / "summary.json"
    (bad.parent / "config.json").write_text(json.dumps(
        {"seed": 0, "config": {"model": {"mixer": "cauchy", "sequence_aligned": True}}}))
    bad.write_text(content)
    df = report.build_table(tmp_path)
    assert df.attrs["unreadable"] == [str(bad)]
    row = df[(df.mixer == "cauchy") & df["Seq.-aligned"]].iloc[0]
    assert row["Seeds"] == 0 and "1 failed: unreadable summary.json" in row["Status"] and cause[:12] in row["Status"]
    assert str(bad) in report.format_table(df, "md")
    rc = cli.main(["report", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 1 and str(bad) in err


@pytest.mark.parametrize("content", ["[]", '{"status": "completed"}', '{"run_id": 7, "status": "completed", '
                                     '"mixer": "x", "sequence_aligned": true}', "\xff\xfe"])
def test_an_unreadable_summary_reruns_the_run_with_a_warning(tmp_path, content):
    """A summary that is JSON but not a summary ([], {"status": "completed"}) makes `mixerzoo ablate` rerun
    the run with a warning naming the file."""
    s = spec(seed=5)
    runner.run_grid([s], tmp_path, progress=False, echo=lambda *_: None)
    bad = tmp_path / s.run_id / "summary.json"
    bad.write_bytes(content.encode("latin-1"))
    warnings, lines = [], []
    again = runner.run_grid([s], tmp_path, progress=False, echo=lines.append, warn=warnings.append)
    assert not again[0].get("skipped") and again[0]["status"] == "completed"
    assert len(warnings) == 1 and str(bad) in warnings[0] and "runs again" in warnings[0]
    assert runner.summary_problem(json.loads(bad.read_text())) is None
    assert len(lines) == 1 and lines[0].startswith(s.run_id)


def test_one_line_prints_odd_values_of_a_summary_as_they_are():
    """one_line prints non-numeric values of a summary as they are."""
    line = runner.one_line({"run_id": "r", "status": "completed", "mixer": "m", "sequence_aligned": True,
                            "average": "high", "wall_s": None,
                            "stages": {"a": {"primary": "x", "primary_metric": "acc"}}})
    assert "avg='high'" in line and "a.acc='x'" in line and "(Nones)" in line
