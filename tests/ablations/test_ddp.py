"""DistributedDataParallel on CPU processes with gloo: sharded evaluation, checkpoints and resume after a kill,
the NVLink-multicast variables. (Several GPUs with NCCL take the same code paths; they are not tested here.)"""
import json
import os
import socket
from pathlib import Path

import pytest
import torch

from ablations.checkpoint import load_checkpoint

import standin_plugin
from ablations import runner, trainer
from ablations.config import run_config_from_dict
from ablations.grid import run_id


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(rank, world, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)


# ----------------------------------------------------------------------------------------- sharded evaluation
EVAL_CASES = [("standin_copy", 8), ("standin_parity", 8), ("standin_parity", 16), ("standin_copy", 64)]
NUM_EXAMPLES = 37   # 37 = 4 * 8 + 5: a short last batch, and an odd number of batches for two ranks


def _model_and_task(name):
    task = standin_plugin.TinyCopy(num_examples=NUM_EXAMPLES) if name == "standin_copy" else \
        standin_plugin.TinyParity(num_examples=NUM_EXAMPLES)
    torch.manual_seed(0)
    model = standin_plugin.StandIn(task.vocab_size, 8, task.seq_len, task.kind, task.num_labels, dropout=0.0)
    return model.eval(), task


def _eval_worker(rank, world, port, out):
    _join(rank, world, port)
    torch.distributed.init_process_group("gloo")
    try:
        results = []
        for name, bs in EVAL_CASES:
            model, task = _model_and_task(name)
            seen = []

            def predict(batch):
                seen.extend(batch["input_ids"].tolist())
                return model(batch["input_ids"], batch["attention_mask"])

            metrics = trainer.evaluate(model, task, ["val"], bs, torch.device("cpu"), None)["val"]
            direct = trainer.sharded_evaluate(task, predict, "val", bs, rank, world, torch.device("cpu"))
            results.append({"metrics": metrics, "direct": direct, "seen": seen})
        Path(out, f"rank{rank}.json").write_text(json.dumps(results))
    finally:
        torch.distributed.destroy_process_group()


def test_sharded_evaluation_matches_single_process(tmp_path):
    torch.multiprocessing.spawn(_eval_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for i, (name, bs) in enumerate(EVAL_CASES):
        model, task = _model_and_task(name)
        with torch.no_grad():
            single = task.evaluate(lambda b: model(b["input_ids"], b["attention_mask"]), "val", bs)
        for r in range(2):
            # the very same numbers, on every rank (per-batch sums added in the single process's order)
            assert ranks[r][i]["metrics"] == single, (name, bs, r)
            assert ranks[r][i]["direct"] == single, (name, bs, r)
        # every example predicted exactly once: the ranks' rows together are the split, none twice
        rows = sorted(map(tuple, ranks[0][i]["seen"] + ranks[1][i]["seen"]))
        whole = sorted(map(tuple, torch.cat([b["input_ids"] for b in task.eval_batches("val", bs)]).tolist()))
        assert rows == whole
        n_batches = -(-NUM_EXAMPLES // bs)
        assert len(ranks[0][i]["seen"]) == sum(min(bs, NUM_EXAMPLES - k * bs) for k in range(0, n_batches, 2))
    # one batch for two ranks: rank 1 predicts nothing and still gets the result
    assert ranks[1][3]["seen"] == [] and ranks[1][3]["metrics"] == ranks[0][3]["metrics"]


# ----------------------------------------------------------------------------------------- resume under DDP
class _Kill:
    """Ends the process at once (no cleanup, like SIGKILL) after optimizer step ``step`` of ``stage``."""

    def __init__(self, stage, step):
        self.stage, self.step = stage, step

    def __call__(self, stage, step, model):
        if stage == self.stage and step == self.step:
            os._exit(17)


def _run_worker(rank, world, port, cfg_dict, out, kill):
    _join(rank, world, port)
    try:
        summary = runner.execute_run(run_config_from_dict(cfg_dict), out, callbacks=[_Kill(*kill)] if kill else [])
        Path(out, f"rank{rank}_summary.json").write_text(json.dumps(summary, default=str))
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _launch(cfg_dict, out, kill=None):
    torch.multiprocessing.spawn(_run_worker, args=(2, _free_port(), cfg_dict, str(out), kill), nprocs=2, join=True)


def test_killed_ddp_run_resumes_to_the_uninterrupted_result(tmp_path):
    # pretraining 12 steps (checkpoints every 5) then fine-tuning 10; dropout on, so the RNG state matters
    cfg_dict = standin_plugin.config()
    rid = run_id(run_config_from_dict(cfg_dict))
    _launch(cfg_dict, tmp_path / "ref")
    with pytest.raises(torch.multiprocessing.ProcessExitedException):
        _launch(cfg_dict, tmp_path / "killed", kill=("standin_copy", 7))
    d = tmp_path / "killed" / rid
    assert not (d / "summary.json").exists()
    assert load_checkpoint(d / "ckpt" / "standin_copy.safetensors")["step"] == 5
    assert not list(d.rglob(".*.tmp.*"))                       # rank 0 alone wrote, atomically
    _launch(cfg_dict, tmp_path / "killed")
    ref = json.loads((tmp_path / "ref" / rid / "summary.json").read_text())
    res = json.loads((d / "summary.json").read_text())
    assert res["status"] == "completed"
    for stage in ("standin_copy", "standin_parity"):
        assert res["stages"][stage]["metrics"] == ref["stages"][stage]["metrics"]
    for stage in ("standin_copy", "standin_parity"):
        a = load_checkpoint(d / "ckpt" / f"{stage}.safetensors")["model"]
        b = load_checkpoint(tmp_path / "ref" / rid / "ckpt" / f"{stage}.safetensors")["model"]
        assert all(torch.equal(a[k], b[k]) for k in a), stage
    # rank 1 computed the same final metrics as rank 0 (sharded evaluation hands the result to every rank)
    r1 = json.loads((tmp_path / "killed" / "rank1_summary.json").read_text())
    assert r1["stages"]["standin_parity"]["metrics"] == res["stages"]["standin_parity"]["metrics"]
    recs = trainer.read_jsonl(d / "metrics.jsonl")
    keys = [(r["stage"], r["step"], r.get("split")) for r in recs]
    assert len(keys) == len(set(keys))                         # no step logged twice after the resume
    rates = [r for r in recs if "train_loss" in r]
    assert rates and all(len(r["tokens_per_s_rank"]) == 2 and r["tokens_per_s"] > 0 for r in rates)
    assert all(r["tokens_per_s"] == pytest.approx(sum(r["tokens_per_s_rank"])) for r in rates)


def test_ddp_token_task_with_uneven_shards_matches_single_process(tmp_path):
    # Masked positions are drawn per sequence, so the two halves of a batch score different numbers of tokens:
    # plain DDP (the mean of the halves' means) would train on a different loss than one process does.
    cfg_dict = standin_plugin.config(pretrain=None, model={"dropout": 0.0}, log_every=1, tasks=[
        {"task": "standin_copy", "steps": 6, "batch_size": 4, "optim": {"lr": 3e-2, "warmup_steps": 1}}])
    c = run_config_from_dict(cfg_dict)
    rid = run_id(c)
    task = standin_plugin.TinyCopy()
    seed = trainer.stage_seed(c.seed, "standin_copy", "data")
    counts = [[int((h != -100).sum()) for h in task.train_batch(k, 4, seed)["labels"].split(2)] for k in range(6)]
    assert any(a != b for a, b in counts)                      # the case this test is about
    single = runner.execute_run(c, tmp_path / "single")
    _launch(cfg_dict, tmp_path / "ddp")
    a = load_checkpoint(tmp_path / "ddp" / rid / "ckpt" / "standin_copy.safetensors")["model"]
    b = load_checkpoint(tmp_path / "single" / rid / "ckpt" / "standin_copy.safetensors")["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    losses = [[r["train_loss"] for r in trainer.read_jsonl(tmp_path / d / rid / "metrics.jsonl") if "train_loss" in r]
              for d in ("single", "ddp")]
    assert len(losses[0]) == 6 and losses[1] == pytest.approx(losses[0], rel=1e-5)   # the whole batch's loss
    assert json.loads((tmp_path / "ddp" / rid / "summary.json").read_text())["stages"]["standin_copy"]["metrics"][
        "val"] == pytest.approx(single["stages"]["standin_copy"]["metrics"]["val"], rel=1e-5)


class _Draws(torch.nn.Module):
    """Records one random draw per training call (what dropout would draw from)."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(standin_plugin.VOCAB, 2)
        self.draws = []

    def forward(self, ids, mask):
        if self.training:
            self.draws.append(float(torch.rand(())))
        return self.emb(ids).mean(1)


def _draws_worker(rank, world, port, out):
    _join(rank, world, port)
    from ablations.config import StageConfig
    trainer.init_distributed(torch.device("cpu"))
    try:
        torch.manual_seed(0)
        model = _Draws()
        stage = StageConfig(task="standin_parity", steps=4, batch_size=4)
        trainer.train_stage(model, standin_plugin.TinyParity(), stage, seed=0, device=torch.device("cpu"))
        Path(out, f"rank{rank}.json").write_text(json.dumps(model.draws))
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_ranks_draw_their_own_dropout_masks(tmp_path):
    # (that the draws are a function of the step, so a resumed run repeats them, the resume test shows: its
    # model has dropout on)
    torch.multiprocessing.spawn(_draws_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    a = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert len(a[0]) == 4 and all(x != y for x, y in zip(a[0], a[1]))    # not the same mask on both halves


@pytest.mark.slow  # ~15 s on 2 busy cores: torchrun's agent and two interpreters start
def test_cli_ablate_under_torchrun(tmp_path):
    # The documented command (docs/scaling.md) with 2 CPU processes: every run is trained by both, rank 0 alone
    # writes and reports.
    import subprocess
    import sys

    import yaml
    base = standin_plugin.config(pretrain=None, tasks=[
        {"task": "standin_parity", "steps": 4, "batch_size": 8, "optim": {"lr": 1e-2, "warmup_steps": 1}}])
    grid = tmp_path / "mini.yaml"
    grid.write_text(yaml.safe_dump({"name": "mini", "base": base, "axes": {"model.d_model": [4, 8]}}))
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(Path(__file__).parent)]),
           "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "ablations.cli", "ablate", str(grid), "--out", str(out), "--no-progress"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("| Structure |") == 1 and "2/2 run(s) completed" in proc.stdout
    confs = [json.loads(p.read_text()) for p in out.glob("*/config.json")]
    assert len(confs) == 2 and all(c["world_size"] == 2 for c in confs)


# ----------------------------------------------------------------------------------------- environment
def test_multicast_variables_default_off_and_pass_through():
    assert trainer.multicast_off_env({}) == {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
                                             "NVSHMEM_DISABLE_NVLS": "1"}
    env = trainer.multicast_off_env({"NCCL_NVLS_ENABLE": "1", "OTHER": "x"})
    assert env["NCCL_NVLS_ENABLE"] == "1" and "OTHER" not in env
