"""Checkpoints: no pickle anywhere, exact round trip, unreadable files restart the stage once."""
import json
import os

import pytest
import torch

import standin_plugin
from ablations import checkpoint, runner, trainer
from ablations.config import run_config_from_dict
from ablations.grid import run_id


def cfg(**over):
    return run_config_from_dict(standin_plugin.config(**over))


class _Payload:
    """Unpickling this creates the marker file: what a crafted checkpoint would do with a shell command."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _pickled_calls(path):
    """{(global, first string argument)} of the calls a torch.save file's pickle would make, found by walking its
    opcodes (pickletools), never by unpickling it."""
    import pickletools
    import zipfile
    with zipfile.ZipFile(path) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    calls, strings, glob = set(), [], None
    for op, arg, _ in pickletools.genops(data):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
        elif op.name == "GLOBAL":
            glob, strings = arg, []
        elif op.name == "STACK_GLOBAL":
            glob, strings = " ".join(strings[-2:]), []
        elif op.name == "REDUCE" and glob is not None:
            calls.add((glob, strings[0] if strings else None))
            glob, strings = None, []
    return calls


def test_round_trip_keeps_every_state_exactly(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 3))
    model[1].weight = torch.nn.Parameter(model[0].weight.T)  # tied (shared storage) weights
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.9))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 ** s)
    for _ in range(3):
        model(torch.randn(2, 3)).sum().backward()
        opt.step()
        sched.step()
    rng = trainer.rng_state(torch.device("cpu"))
    p = tmp_path / "a.safetensors"
    checkpoint.save_checkpoint(p, model_state=model.state_dict(), step=3, done=False, optimizer=opt.state_dict(),
                               scheduler=sched.state_dict(), rng=rng)
    ck = checkpoint.load_checkpoint(p)
    assert ck["step"] == 3 and not ck["done"]
    assert all(torch.equal(ck["model"][k], v) for k, v in model.state_dict().items())
    opt2 = torch.optim.AdamW(model.parameters(), lr=1e-2)
    opt2.load_state_dict(ck["optimizer"])
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for i in a["state"]:
        for k in a["state"][i]:
            assert torch.equal(torch.as_tensor(a["state"][i][k]), torch.as_tensor(b["state"][i][k])), (i, k)
    assert ck["scheduler"] == sched.state_dict()
    assert torch.equal(ck["rng"]["torch"], rng["torch"]) and ck["rng"]["python"] == rng["python"]
    assert (ck["rng"]["numpy"][1] == rng["numpy"][1]).all() and ck["rng"]["numpy"][2:] == rng["numpy"][2:]


def test_a_crafted_pickle_checkpoint_is_never_executed(tmp_path, capsys):
    """A crafted pickle checkpoint is never unpickled: its payload does not run, and the stage restarts."""
    c = cfg()
    ref = runner.execute_run(c, tmp_path / "ref")
    d = tmp_path / "out" / run_id(c)
    marker = tmp_path / "pwned"
    for name in ("standin_copy.pt", "standin_copy.safetensors"):
        (d / "ckpt").mkdir(parents=True, exist_ok=True)
        torch.save({"model": _Payload(marker), "step": 1, "done": False}, d / "ckpt" / name)
    s = runner.execute_run(c, tmp_path / "out")
    assert not marker.exists()
    assert s["status"] == "completed", s["reason"]
    # the stage restarted from scratch: exactly the uninterrupted run
    assert s["stages"]["standin_copy"]["metrics"] == ref["stages"]["standin_copy"]["metrics"]
    err = capsys.readouterr().err
    assert "standin_copy.safetensors" in err and "restarts from scratch" in err
    assert "standin_copy.pt is a pickle checkpoint" in err
    events = [r for r in trainer.read_jsonl(d / "metrics.jsonl") if r.get("event") == "checkpoint_unreadable"]
    assert len(events) == 1 and events[0]["path"].endswith("standin_copy.safetensors")
    assert (d / "ckpt" / "standin_copy.safetensors.unreadable").exists()
    # Negative control, read without unpickling: the file does carry the payload (a call of open on the marker's
    # path), so the assertion above is not vacuous.
    assert (f"{open.__module__} {open.__qualname__}", str(marker)) in _pickled_calls(d / "ckpt" / "standin_copy.pt")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "other_model"])
def test_unreadable_checkpoint_restarts_the_stage_once(tmp_path, capsys, damage):
    """A damaged checkpoint is set aside once and the stage restarts; the run completes."""
    c = cfg()

    class Killed(KeyboardInterrupt):
        pass

    def kill(stage, step, model):
        if stage == "standin_copy" and step == 7:
            raise Killed()

    with pytest.raises(Killed):
        runner.execute_run(c, tmp_path, callbacks=[kill])
    p = tmp_path / run_id(c) / "ckpt" / "standin_copy.safetensors"
    if damage == "truncate":
        p.write_bytes(p.read_bytes()[:100])
    elif damage == "garbage":
        p.write_bytes(b"PK\x03\x04 not a checkpoint")
    else:
        checkpoint.save_checkpoint(p, model_state={"w": torch.zeros(2)}, step=5, done=True, final={})
    steps = []
    s = runner.execute_run(c, tmp_path, callbacks=[lambda st, step, m: steps.append((st, step))])
    assert s["status"] == "completed", s["reason"]
    assert [x for x in steps if x[0] == "standin_copy"][0] == ("standin_copy", 1)   # from scratch
    assert str(p) in capsys.readouterr().err
    assert not p.with_name(p.name).exists() or checkpoint.load_checkpoint(p)["done"]


def test_resume_never_calls_a_pickle_loader(tmp_path, monkeypatch):
    """Resuming never calls a pickle loader."""
    import pickle

    c = cfg()

    class Killed(KeyboardInterrupt):
        pass

    def kill(stage, step, model):
        if stage == "standin_copy" and step == 7:
            raise Killed()

    with pytest.raises(Killed):
        runner.execute_run(c, tmp_path, callbacks=[kill])

    def banned(*a, **k):
        raise AssertionError("a pickle loader was called")

    monkeypatch.setattr(torch, "load", banned)
    monkeypatch.setattr(pickle, "load", banned)
    monkeypatch.setattr(pickle, "loads", banned)
    steps = []
    s = runner.execute_run(c, tmp_path, callbacks=[lambda st, step, m: steps.append((st, step))])
    assert s["status"] == "completed", s["reason"]
    assert steps[0] == ("standin_copy", 6)          # resumed from the step-5 checkpoint


def _rewrite(p, meta_change=None, tensor_change=None):
    """Rewrite the checkpoint ``p`` with its metadata and tensors changed in place."""
    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(str(p), "pt") as f:
        meta = json.loads(f.metadata()["mixerzoo"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if meta_change:
        meta_change(meta)
    if tensor_change:
        tensor_change(tensors)
    save_file(tensors, str(p), metadata={"mixerzoo": json.dumps(meta)})


def _poison(tensors, prefix, value):
    k = next(k for k in sorted(tensors) if k.startswith(prefix) and tensors[k].is_floating_point())
    tensors[k].view(-1)[0] = value


@pytest.mark.parametrize("finished, meta_change, tensor_change", [
    (True, lambda m: m.update(final="x"), None),
    (True, lambda m: m.update(final={"val": {"accuracy": "high"}}), None),
    (True, lambda m: m.update(final={"val": {"accuracy": float("inf")}}), None),
    (True, lambda m: m.update(final={"test": {"accuracy": 0.5}}), None),
    (True, lambda m: m.update(done="yes"), None),
    (True, None, lambda t: _poison(t, "model.", float("nan"))),
    (True, None, lambda t: _poison(t, "model.", float("inf"))),
    (False, lambda m: m.update(step=-3), None),
    (False, lambda m: m.update(step=99), None),
    (False, lambda m: m.update(step=2.5), None),
    (False, None, lambda t: _poison(t, "optim.", float("nan"))),
], ids=["final-str", "final-metric-str", "final-inf", "final-other-split", "done-str", "nan-weight",
        "inf-weight", "step-negative", "step-past-end", "step-float", "nan-optimizer"])
def test_tampered_checkpoint_is_set_aside_and_the_stage_restarts(tmp_path, capsys, finished, meta_change,
                                                                 tensor_change):
    """Checkpoint metadata (`final`, step, done) and weights are validated on load: a tampered `final`, NaN/inf
    weights or a negative or float step set the file aside and the stage restarts, once."""
    c = cfg()
    ref = runner.execute_run(c, tmp_path / "ref")

    class Killed(KeyboardInterrupt):
        pass

    def kill(stage, step, model):
        if stage == "standin_copy" and step == 7:
            raise Killed()

    d = tmp_path / "out" / run_id(c)
    if finished:
        runner.execute_run(c, tmp_path / "out")
        (d / "summary.json").unlink()
    else:
        with pytest.raises(Killed):
            runner.execute_run(c, tmp_path / "out", callbacks=[kill])
    p = d / "ckpt" / "standin_copy.safetensors"
    _rewrite(p, meta_change, tensor_change)
    capsys.readouterr()
    steps = []
    s = runner.execute_run(c, tmp_path / "out", callbacks=[lambda st, step, m: steps.append((st, step))])
    assert s["status"] == "completed", s["reason"]
    assert [x for x in steps if x[0] == "standin_copy"][0] == ("standin_copy", 1)   # from scratch
    assert s["stages"]["standin_copy"]["metrics"] == ref["stages"]["standin_copy"]["metrics"]
    err = capsys.readouterr().err
    assert str(p) in err and "restarts from scratch" in err and len(err.strip().splitlines()) == 1
    assert p.with_name(p.name + ".unreadable").exists()
    ck = checkpoint.load_checkpoint(p)
    assert ck["done"] and all(torch.isfinite(v).all() for v in ck["model"].values())


def test_nan_metrics_of_a_finished_stage_are_kept():
    """A task records an undefined metric (the correlation of a constant prediction) as NaN."""
    assert checkpoint.metrics_problem({"val": {"pearson": float("nan"), "loss": 1}}) is None
    assert checkpoint.metrics_problem({"val_2x": {"not_extendable": True}}) is None
    assert "final['val']['accuracy']" in checkpoint.metrics_problem({"val": {"accuracy": True}})
