"""GLUE: loading the official TSV layout (fixtures written for these tests, not GLUE data), label
mapping, the Hugging Face path (local DatasetDict / mocked hub), and the official metrics checked
against formulas computed here."""
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ablations import tasks
from ablations.tasks import glue, text
from ablations.tasks.base import DataUnavailableError

FIXTURES = Path(__file__).parent / "fixtures" / "glue"

# labels as written in the fixture files (HF glue ids: MNLI e=0 n=1 c=2; QNLI/RTE e=0, not_e=1)
EXPECTED = {
    "cola": ("CoLA", [1, 0, 1, 0, 1], {"val": [1, 0, 1, 0]}),
    "sst2": ("SST-2", [1, 0, 1, 0], {"val": [1, 0, 1]}),
    "mrpc": ("MRPC", [1, 0, 1], {"val": [1, 0, 1, 0]}),
    "qqp": ("QQP", [1, 0, 1], {"val": [1, 0, 0]}),
    "stsb": ("STS-B", [4.8, 0.25, 3.6], {"val": [4.5, 0.0, 3.0, 4.0]}),
    "mnli": ("MNLI", [0, 2, 1], {"val": [0, 2, 1, 0], "val_mm": [0, 2]}),
    "qnli": ("QNLI", [0, 1, 0], {"val": [0, 1]}),
    "rte": ("RTE", [0, 1], {"val": [0, 1, 0]}),
}
PAIRED = {"mrpc", "qqp", "stsb", "mnli", "qnli", "rte"}


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("glue-corpus") / "corpus.txt"
    lines = []
    for f in sorted(FIXTURES.rglob("*.tsv")):
        lines += [" ".join(line.split("\t")) for line in f.read_text().splitlines()]
    path.write_text("\n\n".join(lines * 3))
    return str(path)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MIXERZOO_CACHE", str(tmp_path_factory.getbasetemp() / "mixerzoo-cache"))


def build(glue_task, corpus_file, **kw):
    kw.setdefault("data_dir", str(FIXTURES))
    kw.setdefault("seq_len", 24)
    return tasks.build("glue", glue_task=glue_task, vocab_size=200, tokenizer_corpus=corpus_file, **kw)


@pytest.mark.parametrize("glue_task", sorted(EXPECTED))
def test_tsv_loading_and_label_mapping(glue_task, corpus_file):
    folder, train_labels, eval_labels = EXPECTED[glue_task]
    task = build(glue_task, corpus_file)
    assert task.kind == "sequence" and task.primary_metric == "score"
    assert task.num_labels == (1 if glue_task == "stsb" else 3 if glue_task == "mnli" else 2)
    assert task.eval_splits == tuple(eval_labels)
    big = task.train_batch(0, len(train_labels), seed=0)  # one epoch = a permutation of the train set
    assert sorted(big["labels"].tolist()) == pytest.approx(sorted(train_labels))
    if glue_task == "stsb":
        assert big["labels"].dtype == torch.float32
    for split, labels in eval_labels.items():
        batches = list(task.eval_batches(split, 3))
        got = torch.cat([b["labels"] for b in batches])
        assert got.tolist() == pytest.approx(labels)
        for b in batches:
            assert b["input_ids"].shape[1] == 24 and bool((b["input_ids"][:, 0] == text.CLS_ID).all())
            n_sep = ((b["input_ids"] == text.SEP_ID) & b["attention_mask"]).sum(1)
            assert bool((n_sep == (2 if glue_task in PAIRED else 1)).all())
            assert torch.equal(b["attention_mask"], b["input_ids"] != text.PAD_ID)
    # the task folder itself works as data_dir too
    direct = build(glue_task, corpus_file, data_dir=str(FIXTURES / folder))
    assert torch.equal(direct.train_batch(0, 2, 1)["input_ids"], task.train_batch(0, 2, 1)["input_ids"])
    assert task.describe()["source"].startswith("tsv:")


def test_first_sentence_is_encoded_first(corpus_file):
    task = build("rte", corpus_file, seq_len=128)
    ids = next(task.eval_batches("val", 1))["input_ids"][0]
    assert task.tokenizer.decode(ids.tolist()) == "heavy snow delayed all flights. flights were delayed."
    assert task.describe()["truncated_fraction"] == 0.0
    short = build("rte", corpus_file, seq_len=8)
    assert short.describe()["truncated_fraction"] == 1.0


def _mcc(y, p):
    tp = np.sum((y == 1) & (p == 1)); tn = np.sum((y == 0) & (p == 0))
    fp = np.sum((y == 0) & (p == 1)); fn = np.sum((y == 1) & (p == 0))
    den = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return 0.0 if den == 0 else (tp * tn - fp * fn) / den


def _f1(y, p):
    tp = np.sum((y == 1) & (p == 1))
    return 2 * tp / (np.sum(p == 1) + np.sum(y == 1))


def test_metrics_against_formulas():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = np.where(rng.random(200) < 0.7, y, 1 - y)
    m = glue.glue_metrics("cola", p, y)
    assert m["matthews"] == pytest.approx(_mcc(y, p), abs=1e-12) and m["score"] == m["matthews"]
    m = glue.glue_metrics("mrpc", p, y)
    assert m["accuracy"] == pytest.approx(np.mean(p == y)) and m["f1"] == pytest.approx(_f1(y, p))
    assert m["score"] == pytest.approx((m["accuracy"] + m["f1"]) / 2)
    y3 = rng.integers(0, 3, 150)
    p3 = np.where(rng.random(150) < 0.5, y3, rng.integers(0, 3, 150))
    assert glue.glue_metrics("mnli", p3, y3) == {"accuracy": pytest.approx(np.mean(p3 == y3)),
                                                 "score": pytest.approx(np.mean(p3 == y3))}
    ys = rng.random(100) * 5
    ps = ys + rng.normal(0, 1, 100)
    m = glue.glue_metrics("stsb", ps, ys)
    assert m["pearson"] == pytest.approx(np.corrcoef(ps, ys)[0, 1], abs=1e-12)
    spearman = pd.Series(ps).rank().corr(pd.Series(ys).rank())
    assert m["spearman"] == pytest.approx(spearman, abs=1e-12)
    assert m["score"] == pytest.approx((m["pearson"] + m["spearman"]) / 2)
    assert glue.glue_average({"cola": 0.2, "sst2": 0.9, "mrpc": 0.7}) == pytest.approx(0.6)
    with pytest.raises(ValueError, match="wnli"):
        glue.glue_average({"wnli": 0.5})
    with pytest.raises(ValueError, match="shapes"):
        glue.glue_metrics("sst2", np.zeros(3), np.zeros(4))


def test_evaluate_through_task(corpus_file):
    task = build("mrpc", corpus_file)
    # predict "1" everywhere: val labels [1, 0, 1, 0] -> accuracy 0.5, F1 = 2*2/(4+2)
    m = task.evaluate(lambda b: torch.tensor([[0.0, 1.0]]).repeat(len(b["labels"]), 1), "val", 3)
    assert m["accuracy"] == pytest.approx(0.5) and m["f1"] == pytest.approx(4 / 6)
    p_one = math.exp(1) / (1 + math.exp(1))
    assert m["loss"] == pytest.approx(-(math.log(p_one) + math.log(1 - p_one)) / 2)  # half right, half wrong
    sts = build("stsb", corpus_file)
    pred = torch.tensor([4.0, 1.0, 2.0, 5.0])  # dev scores 4.5 0 3 4
    m = sts.evaluate(lambda b: pred[:len(b["labels"])].unsqueeze(-1) if len(b["labels"]) == 4 else None, "val", 4)
    gold = np.array([4.5, 0.0, 3.0, 4.0])
    assert m["pearson"] == pytest.approx(np.corrcoef(pred.numpy(), gold)[0, 1], abs=1e-6)
    assert m["loss"] == pytest.approx(float(np.mean((pred.numpy() - gold) ** 2)), rel=1e-6)
    batch = sts.train_batch(0, 3, 0)
    loss = sts.loss(batch["labels"].unsqueeze(-1) + 1.0, batch)
    assert float(loss) == pytest.approx(1.0)


def test_subsets_and_errors(corpus_file, tmp_path):
    task = build("cola", corpus_file, max_train_examples=2, max_eval_examples=3)
    assert task.describe()["examples"] == {"train": 2, "val": 3}
    with pytest.raises(ValueError, match="glue_task"):
        build("wnli", corpus_file)
    with pytest.raises(DataUnavailableError, match="RTE"):
        build("rte", corpus_file, data_dir=str(tmp_path))
    bad = tmp_path / "RTE"
    shutil.copytree(FIXTURES / "RTE", bad)
    with open(bad / "train.tsv", "a") as fh:
        fh.write("9\tonly two fields\n")
    with pytest.raises(ValueError, match=r"train.tsv:4: 2 tab-separated fields"):
        build("rte", corpus_file, data_dir=str(tmp_path))
    (bad / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n")
    with pytest.raises(ValueError, match="label 'maybe'"):
        build("rte", corpus_file, data_dir=str(tmp_path))
    (bad / "train.tsv").write_text("index\tsentence1\tlabel\n0\ta\tentailment\n")
    with pytest.raises(ValueError, match="sentence2"):
        build("rte", corpus_file, data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="max_train_examples"):
        build("rte", corpus_file, max_train_examples=0)


def _hf_dict(datasets):
    feats = {"premise": ["a cat sleeps", "dogs bark", "it rains"], "hypothesis": ["an animal rests", "x", "y"],
             "label": [0, 2, 1], "idx": [0, 1, 2]}
    return datasets.DatasetDict({"train": datasets.Dataset.from_dict(feats),
                                 "validation_matched": datasets.Dataset.from_dict(feats),
                                 "validation_mismatched": datasets.Dataset.from_dict(feats),
                                 "test_matched": datasets.Dataset.from_dict({**feats, "label": [-1] * 3})})


def test_hf_paths(corpus_file, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    _hf_dict(datasets).save_to_disk(str(tmp_path / "mnli"))
    task = build("mnli", corpus_file, data_dir=str(tmp_path / "mnli"))
    assert task.eval_splits == ("val", "val_mm")
    assert torch.cat([b["labels"] for b in task.eval_batches("val", 2)]).tolist() == [0, 2, 1]
    calls = []

    def fake_hub(path, name=None, **kwargs):
        calls.append((path, name))
        return _hf_dict(datasets)
    monkeypatch.setattr(datasets, "load_dataset", fake_hub)
    hub = build("mnli", corpus_file, data_dir=None)
    assert calls == [("nyu-mll/glue", "mnli")] and hub.describe()["source"] == "hf:nyu-mll/glue/mnli"
    assert torch.equal(next(hub.eval_batches("val", 3))["input_ids"], next(task.eval_batches("val", 3))["input_ids"])
    with pytest.raises(ValueError, match="sentence1"):
        build("rte", corpus_file, data_dir=None)  # the fake hub has MNLI's columns, not RTE's

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub")
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataUnavailableError, match="Hugging Face"):
        build("sst2", corpus_file, data_dir=None)


def test_tokenizer_shared_with_mlm(corpus_file, tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "mixerzoo-cache"
    task = build("sst2", corpus_file)
    tok = text.get_tokenizer(200, corpus_file, cache_dir=cache)
    assert task.describe()["tokenizer_sha256"] == text.tokenizer_sha256(tok)


def test_build_requires_glue_task():
    with pytest.raises(ValueError, match="glue_task"):
        tasks.build("glue")
