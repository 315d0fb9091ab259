"""Trainer and runner: schedule, atomic files, non-finite guard, OOM, resume after a kill, skip, determinism."""
import json
import math
import os

import pytest
import torch

import standin_plugin
from ablations import runner, trainer
from ablations.config import run_config_from_dict
from ablations.checkpoint import load_checkpoint as read_ckpt
from ablations.grid import RunSpec, run_id


def cfg(**over):
    return run_config_from_dict(standin_plugin.config(**over))


def spec(c):
    return RunSpec(run_id=run_id(c), config=c, point={})


# ----------------------------------------------------------------------------------------- schedule
def test_lr_factor_warmup_then_decay():
    # warmup: linear ramp reaching 1 at the last warmup step
    assert [trainer.lr_factor(s, 4, 20, "linear", 0.0) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    # linear decay: halfway through the decay phase the factor is halfway between 1 and min_lr_ratio
    assert trainer.lr_factor(4 + 8, 4, 20, "linear", 0.2) == pytest.approx(0.2 + 0.8 * 0.5)
    # cosine: (1 + cos(pi p)) / 2 at p = 1/4
    assert trainer.lr_factor(4 + 4, 4, 20, "cosine", 0.0) == pytest.approx((1 + math.cos(math.pi / 4)) / 2)
    assert trainer.lr_factor(19, 4, 20, "linear", 0.0) == pytest.approx(1 / 16)
    assert trainer.lr_factor(10, 0, 20, "constant", 0.0) == 1.0
    with pytest.raises(ValueError, match="schedule must be one of linear, cosine, constant"):
        trainer.lr_factor(10, 0, 20, "exp", 0.0)


def test_optimizer_follows_schedule_and_skips_decay_on_vectors():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3))
    c = cfg().pretrain.optim
    opt, sched = trainer.build_optimizer(model, c, total_steps=12)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([c.lr * trainer.lr_factor(s, c.warmup_steps, 12, c.schedule, c.min_lr_ratio)
                                 for s in range(12)])
    wd = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert wd[id(model[0].weight)] == c.weight_decay and wd[id(model[0].bias)] == 0.0
    assert wd[id(model[1].weight)] == 0.0


# ----------------------------------------------------------------------------------------- files
def test_atomic_write_keeps_old_content_when_interrupted(tmp_path, monkeypatch):
    p = tmp_path / "summary.json"
    trainer.atomic_write_json(p, {"a": 1})

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        trainer.atomic_write_json(p, {"a": 2, "big": "x" * 10000})
    monkeypatch.undo()
    assert json.loads(p.read_text()) == {"a": 1}          # readers never see a partial file
    trainer.atomic_write_json(p, {"a": 3})
    assert json.loads(p.read_text()) == {"a": 3}
    assert [q.name for q in tmp_path.iterdir() if not q.name.startswith(".")] == ["summary.json"]


def test_metrics_log_truncate_and_torn_line(tmp_path):
    log = trainer.MetricsLog(tmp_path / "m.jsonl")
    for s in range(1, 6):
        log.append({"stage": "a", "step": s})
        log.append({"stage": "b", "step": s})
    log.truncate("a", 3)
    recs = log.records()
    assert [r["step"] for r in recs if r["stage"] == "a"] == [1, 2, 3]
    assert [r["step"] for r in recs if r["stage"] == "b"] == [1, 2, 3, 4, 5]
    with open(tmp_path / "m.jsonl", "a") as f:
        f.write('{"stage": "a", "st')                      # a kill in the middle of a write
    assert len(trainer.read_jsonl(tmp_path / "m.jsonl")) == 8


# ----------------------------------------------------------------------------------------- runs
def test_run_writes_files_and_rerun_skips(tmp_path):
    c = cfg()
    s = runner.execute_run(c, tmp_path)
    d = tmp_path / run_id(c)
    assert s["status"] == "completed" and s["reason"] is None
    assert set(s["stages"]) == {"standin_copy", "standin_parity"}
    assert s["stages"]["standin_parity"]["role"] == "finetune" and s["stages"]["standin_parity"]["in_average"]
    assert s["average"] == pytest.approx(100 * s["stages"]["standin_parity"]["metrics"]["val"]["accuracy"])
    conf = json.loads((d / "config.json").read_text())
    assert conf["run_id"] == run_id(c) and conf["seed"] == 0 and conf["versions"]["torch"] == torch.__version__
    assert conf["device"].startswith("cpu")
    recs = trainer.read_jsonl(d / "metrics.jsonl")
    evals = [r["step"] for r in recs if r["stage"] == "standin_copy" and "split" in r]
    assert evals == [4, 8, 12]
    assert not any("peak_mem_gb" in r for r in recs)  # GPU memory fields only on CUDA
    before = (d / "summary.json").stat().st_mtime_ns
    again = runner.execute_run(c, tmp_path)
    assert again["skipped"] and (d / "summary.json").stat().st_mtime_ns == before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU memory fields are logged on CUDA only")
def test_cuda_log_rows_carry_memory_fields(tmp_path):
    c = cfg(device="cuda")
    s = runner.execute_run(c, tmp_path)
    assert s["status"] == "completed", s["reason"]
    rows = [r for r in trainer.read_jsonl(tmp_path / run_id(c) / "metrics.jsonl") if "train_loss" in r]
    assert rows and all(r["peak_mem_gb"] > 0 and r["reserved_gb"] >= r["peak_mem_gb"] - 1e-3
                        and r["alloc_retries"] >= 0 for r in rows)


def test_finetune_starts_from_the_pretrained_encoder(tmp_path):
    c = cfg()
    runner.execute_run(c, tmp_path)
    d = tmp_path / run_id(c)
    pre = read_ckpt(d / "ckpt" / "standin_copy.safetensors")["model"]
    seen = {}

    def grab(stage, step, model):
        if stage == "standin_parity" and step == 1:
            seen["emb"] = model.encoder.emb.weight.detach().clone()

    c2 = cfg(seed=5)
    runner.execute_run(c2, tmp_path, callbacks=[grab])
    pre2 = read_ckpt(tmp_path / run_id(c2) / "ckpt" / "standin_copy.safetensors")["model"]
    assert not torch.equal(pre["encoder.emb.weight"], pre2["encoder.emb.weight"])
    # one optimizer step after loading: close to the pretrained weights, far from a fresh init
    delta = (seen["emb"] - pre2["encoder.emb.weight"]).abs().max()
    assert delta < 0.05


def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    c = cfg()
    ref = runner.execute_run(c, tmp_path / "ref")

    class Killed(KeyboardInterrupt):
        pass

    def kill_at(stage_name, k):
        def cb(stage, step, model):
            if stage == stage_name and step == k:
                raise Killed()
        return cb

    out = tmp_path / "killed"
    with pytest.raises(Killed):
        runner.execute_run(c, out, callbacks=[kill_at("standin_copy", 7)])
    d = out / run_id(c)
    assert not (d / "summary.json").exists()                   # not finished: will be resumed
    assert read_ckpt(d / "ckpt" / "standin_copy.safetensors")["step"] == 5
    with pytest.raises(Killed):                                # killed again, in the second stage
        runner.execute_run(c, out, callbacks=[kill_at("standin_parity", 6)])
    steps_done = []
    res = runner.execute_run(c, out, callbacks=[lambda st, step, m: steps_done.append((st, step))])
    assert res["status"] == "completed"
    assert steps_done == [("standin_parity", s) for s in range(6, 11)]   # pretraining was not repeated
    assert res["stages"]["standin_parity"]["metrics"] == ref["stages"]["standin_parity"]["metrics"]
    assert res["stages"]["standin_copy"]["metrics"] == ref["stages"]["standin_copy"]["metrics"]
    a = read_ckpt(d / "ckpt" / "standin_parity.safetensors")["model"]
    b = read_ckpt(tmp_path / "ref" / run_id(c) / "ckpt" / "standin_parity.safetensors")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    recs = trainer.read_jsonl(d / "metrics.jsonl")
    keys = [(r["stage"], r["step"], r.get("split")) for r in recs]
    assert len(keys) == len(set(keys))                           # no step logged twice
    ref_keys = [(r["stage"], r["step"], r.get("split")) for r in trainer.read_jsonl(
        tmp_path / "ref" / run_id(c) / "metrics.jsonl")]
    assert sorted(keys, key=str) == sorted(ref_keys, key=str)


def test_deterministic_on_cpu(tmp_path):
    a = runner.execute_run(cfg(seed=2), tmp_path / "a")
    b = runner.execute_run(cfg(seed=2), tmp_path / "b")
    c = runner.execute_run(cfg(seed=3), tmp_path / "c")
    assert a["stages"]["standin_copy"]["metrics"] == b["stages"]["standin_copy"]["metrics"]
    assert a["stages"]["standin_copy"]["metrics"] != c["stages"]["standin_copy"]["metrics"]


def test_nan_guard_marks_run_failed_and_grid_goes_on(tmp_path):
    bad = cfg(model={"mixer_kwargs": {"poison_step": 4}})
    good = cfg(seed=1)
    lines = []
    results = runner.run_grid([spec(bad), spec(good)], tmp_path, jobs=1, progress=False, echo=lines.append)
    assert [r["status"] for r in results] == ["failed", "completed"]
    assert results[0]["reason"].startswith("non-finite") and "step 4" in results[0]["reason"]
    assert "standin_copy" in results[0]["reason"]
    on_disk = json.loads((tmp_path / run_id(bad) / "summary.json").read_text())
    assert on_disk["status"] == "failed"
    assert any("FAILED" in ln and run_id(bad) in ln for ln in lines)
    # a failed run is finished: skipped on rerun, retried with retry_failed
    again = runner.run_grid([spec(bad)], tmp_path, progress=False, echo=lines.append)
    assert again[0]["skipped"]
    retried = runner.run_grid([spec(bad)], tmp_path, progress=False, echo=lines.append, retry_failed=True)
    assert not retried[0].get("skipped") and retried[0]["status"] == "failed"


def test_out_of_memory_is_recorded(tmp_path, monkeypatch):
    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(runner, "train_stage", oom)
    s = runner.execute_run(cfg(), tmp_path)
    assert s["status"] == "failed" and s["reason"].startswith("out of memory")


def test_optional_stage_with_missing_data_is_unavailable(tmp_path, monkeypatch):
    from ablations import tasks
    from ablations.tasks.base import DataUnavailableError

    c = cfg(tasks=[{"task": "standin_parity", "init": "pretrain", "steps": 2, "batch_size": 4, "optional": True,
                    "options": {"seq_len": 8}}])
    orig = tasks.build

    def fake(name, **options):
        if name == "standin_parity":
            raise DataUnavailableError("no GLUE files under /nowhere")
        return orig(name, **options)

    monkeypatch.setattr(runner, "_TASK_CACHE", {})
    monkeypatch.setattr(tasks, "build", fake)
    s = runner.execute_run(c, tmp_path)
    assert s["status"] == "completed"
    assert s["stages"]["standin_parity"]["status"] == "unavailable"
    assert "no GLUE files" in s["stages"]["standin_parity"]["reason"]
    assert s["average"] is None
    # the same missing data in a required stage fails the run, naming the cause
    c2 = cfg(seed=9, tasks=[{"task": "standin_parity", "init": "pretrain", "steps": 2, "batch_size": 4}])
    s2 = runner.execute_run(c2, tmp_path)
    assert s2["status"] == "failed" and "no GLUE files" in s2["reason"]


def test_fixed_parameterization_reports_not_extendable(tmp_path):
    c = cfg(pretrain=None, tasks=[{"task": "standin_copy", "steps": 3, "batch_size": 4,
                                   "options": {"extrapolate": True}}])
    s = runner.execute_run(c, tmp_path)
    m = s["stages"]["standin_copy"]["metrics"]
    assert m["val_2x"] == {"not_extendable": True} and "accuracy" in m["val"]


def test_a_run_locked_by_another_process_is_not_trained_twice(tmp_path):
    c = cfg(seed=4)
    d = tmp_path / run_id(c)
    d.mkdir(parents=True)
    held = runner._try_lock(d)           # stands in for a second invocation working on the same OUT
    try:
        s = runner.execute_run(c, tmp_path)
        assert s["status"] == "running" and s["skipped"] and not (d / "summary.json").exists()
        assert "another process" in runner.one_line(s)
    finally:
        held.close()
    assert runner.execute_run(c, tmp_path)["status"] == "completed"


def test_training_on_scored_positions_only_matches_the_full_head():
    """The trainer feeds only the scored positions of a token task to a head that supports it; the weights
    after a few steps equal those of training through the full head (same loss, same gradients)."""
    c = run_config_from_dict({"seed": 0, "device": "cpu", "checkpoint_every": 0, "log_every": 2,
                              "model": {"d_model": 16, "n_layers": 1, "headdim": 8, "qk_dim": 4, "mlp_ratio": 2,
                                        "mixer": "toeplitz", "sequence_aligned": True},
                              "pretrain": {"task": "mqar", "steps": 4, "batch_size": 8, "eval_every": 0,
                                           "options": {"seq_len": 32, "vocab_size": 32, "num_kv_pairs": 4,
                                                       "num_examples": 16},
                                           "optim": {"lr": 1e-2, "warmup_steps": 1}}})
    task = runner.build_task(c.pretrain)
    states = []
    for selected in (True, False):
        torch.manual_seed(0)
        model = runner.build_model(c.model, task, c.pretrain, task.seq_len)
        assert model.predicts_selected
        model.predicts_selected = selected
        trainer.train_stage(model, task, c.pretrain, seed=0, device=torch.device("cpu"), precision="fp32")
        states.append(model.state_dict())
    for k in states[0]:
        torch.testing.assert_close(states[0][k], states[1][k], rtol=1e-4, atol=1e-5, msg=k)


def test_compiled_training_matches_eager_and_keeps_the_run_id(tmp_path, monkeypatch):
    """compile: true trains through torch.compile (here its aot_eager backend: no C++ toolchain needed) to
    the same metrics as eager, and names the same run, so a run resumes whether compiled or not."""
    compiled = []
    real_compile = torch.compile

    def compile_spy(model, **kw):
        compiled.append(type(model).__name__)
        return real_compile(model, backend="aot_eager")

    monkeypatch.setattr(torch, "compile", compile_spy)
    no_dropout = {"dropout": 0.0}
    eager = runner.execute_run(cfg(model=no_dropout), tmp_path / "eager")
    assert compiled == []
    fused = runner.execute_run(cfg(model=no_dropout, compile=True), tmp_path / "compiled")
    assert compiled, "compile: true did not reach torch.compile"
    assert run_id(cfg(compile=True)) == run_id(cfg())
    for stage in ("standin_copy", "standin_parity"):
        a, b = eager["stages"][stage]["metrics"]["val"], fused["stages"][stage]["metrics"]["val"]
        assert a.keys() == b.keys()
        for k in a:
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-5), (stage, k)


def test_nan_guard_holds_with_a_progress_bar(tmp_path):
    """With a progress bar the non-finite check runs at log, eval and checkpoint steps (not every step, which
    would stall the host): the failure still names the first bad step."""
    bad = cfg(model={"mixer_kwargs": {"poison_step": 4}})
    s = runner.execute_run(bad, tmp_path, progress=True)
    assert s["status"] == "failed" and "step 4" in s["reason"]
