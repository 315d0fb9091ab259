"""Reusable models: save_pretrained/from_pretrained round trips, and a trained run -> load_run -> the
same predictions and metrics as the run recorded."""
import json

import pytest
import torch

from ablations.checkpoint import load_checkpoint

import ablations
import mixers
from ablations import runner
from ablations.config import run_config_from_dict
from ablations.grid import run_id
from english_fixtures import install


@pytest.mark.parametrize("head", ["encoder", "mlm", "cls"])
def test_save_and_load_pretrained(tmp_path, head):
    torch.manual_seed(0)
    enc = mixers.MixerEncoder(40, 16, 1, "quasiseparable", True, 24, headdim=8, qk_dim=4, mlp_ratio=2)
    model = {"encoder": enc, "mlm": mixers.MixerForMaskedLM(enc),
             "cls": mixers.MixerForSequenceClassification(enc, 3, pooling="first")}[head].eval()
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    again = type(model).from_pretrained(tmp_path / "m")
    x = torch.randint(0, 40, (2, 9))
    assert torch.equal(model(x), again(x)) and not again.training
    assert torch.equal(mixers.MixerEncoder.from_pretrained(tmp_path / "m")(x), enc(x))  # the encoder of any head
    if head != "encoder":
        with pytest.raises(ValueError, match="holds a"):
            (mixers.MixerForMaskedLM if head == "cls" else mixers.MixerForSequenceClassification).from_pretrained(
                tmp_path / "m")


def test_save_refuses_unnamed_mixer(tmp_path):
    mixer_cls = mixers.get("toeplitz")
    enc = mixers.MixerEncoder(10, 8, 1, mixer_cls, False, 8, headdim=4, qk_dim=2)
    with pytest.raises(ValueError, match="registered name"):
        enc.save_pretrained(tmp_path)


def test_run_exports_models_and_load_run_round_trip(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("MIXERZOO_CACHE", str(cache))
    install(monkeypatch, tmp_path / "wheels", cache)
    text_opts = {"seq_len": 16, "vocab_size": 200}
    cfg = run_config_from_dict({
        "device": "cpu", "checkpoint_every": 100, "log_every": 5,
        "model": {"mixer": "quasiseparable", "sequence_aligned": True, "d_model": 16, "n_layers": 1, "headdim": 8,
                  "qk_dim": 4, "mlp_ratio": 2},
        "pretrain": {"task": "mlm", "options": {"corpus": "english", **text_opts}, "steps": 6, "batch_size": 8,
                     "optim": {"lr": 3e-3, "warmup_steps": 1}},
        "tasks": [{"task": "sentiment", "init": "pretrain", "steps": 6, "batch_size": 8,
                   "options": {"tokenizer_corpus": "english", **text_opts}, "optim": {"lr": 3e-3}}]})
    summary = runner.execute_run(cfg, tmp_path / "runs")
    assert summary["status"] == "completed", summary["reason"]
    run_dir = tmp_path / "runs" / run_id(cfg)
    assert (run_dir / "tokenizer.json").exists()
    for stage in ("mlm", "sentiment"):
        assert {p.name for p in (run_dir / "models" / stage).iterdir()} == {"config.json", "model.safetensors",
                                                                         "tokenizer.json"}
    model, tok = ablations.load_run(run_dir)
    assert isinstance(model, mixers.MixerForMaskedLM) and tok.token_to_id("[MASK]") == 4
    clf, tok2 = ablations.load_run(run_dir, stage="sentiment")
    assert isinstance(clf, mixers.MixerForSequenceClassification) and tok2.to_str() == tok.to_str()
    config = json.loads((run_dir / "models" / "sentiment" / "config.json").read_text())
    assert config["mixerzoo"]["labels"] == ["rotten", "fresh"] and config["mixerzoo"]["run_id"] == run_id(cfg)
    # the exported weights are the trained ones: same logits as the final checkpoint, same metrics as recorded
    ckpt = load_checkpoint(run_dir / "ckpt" / "sentiment.safetensors")["model"]
    ref = runner.build_model(cfg.model, runner.build_task(cfg.tasks[0]), cfg.tasks[0], 16)
    ref.load_state_dict(ckpt)
    ref.eval()
    enc = tok.encode("the film is a warm funny story")
    ids = torch.tensor([enc.ids])
    assert torch.equal(clf(ids), ref(ids))
    task = runner.build_task(cfg.tasks[0])
    with torch.no_grad():
        metrics = task.evaluate(lambda b: clf(b["input_ids"], b["attention_mask"]), "val", 64)
    assert metrics["accuracy"] == summary["stages"]["sentiment"]["metrics"]["val"]["accuracy"]
    with pytest.raises(ValueError, match="stage must be one of mlm, sentiment"):
        ablations.load_run(run_dir, stage="glue")
    with pytest.raises(FileNotFoundError, match="no exported models"):
        ablations.load_run(tmp_path)
