"""Text tasks: built-in corpus determinism and split by file, local/HF corpora, the WordPiece tokenizer,
BERT masking statistics, packing, and the docstring_package labels (checked against the corpus)."""
import hashlib
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from ablations import tasks
from ablations.tasks import text
from ablations.tasks.base import IGNORE_INDEX, DataUnavailableError

FILES = 40  # files per package: small enough to extract in seconds, big enough for 5-class val splits
VOCAB = 600


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "mixerzoo-cache"


@pytest.fixture(autouse=True)
def _isolated_cache(cache, monkeypatch):
    monkeypatch.setenv("MIXERZOO_CACHE", str(cache))


@pytest.fixture(scope="module")
def corpus(cache):
    return text.load_builtin_corpus(max_files_per_package=FILES, cache_dir=cache)


# ------------------------------------------------------------------------------------------ corpus
def test_builtin_corpus_deterministic_and_cached(corpus, cache, tmp_path):
    fresh = text.load_builtin_corpus(max_files_per_package=FILES, cache_dir=tmp_path)  # extracted again
    assert fresh.sha256 == corpus.sha256 and len(fresh) == len(corpus) > 100
    again = text.load_builtin_corpus(max_files_per_package=FILES, cache_dir=cache)  # from the cache file
    assert again.sha256 == corpus.sha256
    (cached_file,) = (tmp_path / "corpus").glob("builtin-*.jsonl.gz")
    cached_file.write_bytes(cached_file.read_bytes()[:500])  # a damaged cache is rebuilt, not trusted
    assert text.load_builtin_corpus(max_files_per_package=FILES, cache_dir=tmp_path).sha256 == corpus.sha256
    assert [d.text for d in again.documents] == [d.text for d in corpus.documents]
    # the hash is SHA-256 over (source, package, text) of every document, recomputed here
    h = hashlib.sha256()
    for d in corpus.documents:
        h.update(f"{d.source}\0{d.package}\0{d.text}\0\0".encode())
    assert corpus.describe()["sha256"] == h.hexdigest()
    assert {d.package for d in corpus.documents} == set(text.PACKAGES)
    for d in corpus.documents:
        assert d.source.startswith(d.package + ":") and d.text.strip() == d.text and d.text
        assert ">>>" not in d.text.splitlines()[0]
        path = d.source.split(":", 1)[1]
        assert not any(part in ("test", "tests", "idlelib", "tkinter") for part in path.split("/"))
    per_package_files = {}
    for d in corpus.documents:
        per_package_files.setdefault(d.package, set()).add(d.source)
    assert all(len(v) <= FILES for v in per_package_files.values())


def test_split_by_source_file(corpus):
    train = {d.source for d in corpus.split("train")}
    val = {d.source for d in corpus.split("val")}
    assert train and val and not (train & val)
    for source in train | val:  # independent re-derivation of the rule
        digest = hashlib.sha256(source.encode()).digest()
        expected = "val" if int.from_bytes(digest[:8], "big") / 2 ** 64 < text.VAL_FRACTION else "train"
        assert (source in val) == (expected == "val")
    assert len(corpus.split("train")) + len(corpus.split("val")) == len(corpus)
    with pytest.raises(ValueError, match="test"):
        corpus.split("test")


def test_extract_docstrings_and_doctest_stripping():
    src = b'''"""Module doc."""
import torch
class A:
    """Class doc.

    >>> A()
    A()

    After the example."""
    def f(self):
        """Method doc."""
    if True:
        def g():
            """Nested in an if."""
add_docstr(torch.abs, r"""
    abs(input) -> Tensor

    Absolute value.
""")
add_newdoc("numpy.core", "ndarray", ("T", """Transpose."""))
x = "not a docstring"
'''
    assert text.extract_docstrings(src) == [
        "Module doc.", "Class doc.\n\nAfter the example.", "Method doc.", "Nested in an if.",
        "abs(input) -> Tensor\n\nAbsolute value.", "Transpose."]
    assert text.extract_docstrings(b"def broken(:\n") is None
    assert text.strip_doctests(">>> 1 + 1\n2\n") == ""


def test_local_corpus_txt_jsonl_and_errors(tmp_path):
    (tmp_path / "a.txt").write_text("first paragraph\nstill first\n\n\nsecond paragraph\n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "from json", "id": 1}) + "\n\n"
                                      + json.dumps({"text": "again"}) + "\n")
    c = text.load_corpus([tmp_path / "a.txt", str(tmp_path / "b.jsonl")])
    # two sources (one per file): both splits are non-empty even if the hash rule says otherwise
    assert {c.split_of_source(d.source) for d in c.documents} == {"train", "val"}
    assert len(c.split("train")) + len(c.split("val")) == 4
    assert [d.text for d in c.documents] == ["first paragraph\nstill first", "second paragraph", "from json", "again"]
    assert c.documents[0].source.endswith("a.txt#0") and c.documents[0].package is None
    assert text.load_corpus(str(tmp_path)).sha256 == c.sha256  # a directory = its files, sorted
    assert len(text.load_corpus(str(tmp_path), max_documents=3)) == 3
    (tmp_path / "bad.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl:1.*text_field='text'"):
        text.load_corpus(tmp_path / "bad.jsonl")
    (tmp_path / "num.jsonl").write_text(json.dumps({"text": 3}) + "\n")
    with pytest.raises(ValueError, match="'text' must be a string"):
        text.load_corpus(tmp_path / "num.jsonl")
    assert [d.text for d in text.load_corpus(tmp_path / "bad.jsonl", text_field="body").documents] == ["x"]
    (tmp_path / "c.csv").write_text("x")
    with pytest.raises(ValueError, match=r"\.txt or \.jsonl"):
        text.load_corpus(tmp_path / "c.csv")
    with pytest.raises(DataUnavailableError, match="missing.txt"):
        text.load_corpus(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="max_files_per_package"):
        text.load_corpus(tmp_path / "a.txt", max_files_per_package=3)
    with pytest.raises(ValueError, match="corpus must be"):
        text.load_corpus(42)


def test_hf_corpus_from_disk_and_unreachable(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": ["alpha beta", "gamma delta", "epsilon"], "n": [1, 2, 3]}).save_to_disk(
        str(tmp_path / "ds"))
    c = text.load_corpus(f"hf:{tmp_path / 'ds'}")
    assert [d.text for d in c.documents] == ["alpha beta", "gamma delta", "epsilon"]
    assert len(text.load_corpus(f"hf:{tmp_path / 'ds'}", max_documents=2)) == 2
    with pytest.raises(ValueError, match="text_field='body'"):
        text.load_corpus(f"hf:{tmp_path / 'ds'}", text_field="body")

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hub")
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataUnavailableError, match="hf:some/dataset"):
        text.load_corpus("hf:some/dataset:cfg")


# --------------------------------------------------------------------------------------- tokenizer
def test_tokenizer_special_tokens_round_trip_and_cache(corpus, cache):
    tok = text.get_tokenizer(VOCAB, corpus, cache_dir=cache)
    assert tok.get_vocab_size() == VOCAB
    assert [tok.token_to_id(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")] == [0, 1, 2, 3, 4]
    sentence = "Return the Array of Values, computed along the given axis."
    enc = tok.encode(sentence)
    assert enc.ids[0] == text.CLS_ID and enc.ids[-1] == text.SEP_ID and text.UNK_ID not in enc.ids
    assert tok.decode(enc.ids) == "return the array of values, computed along the given axis."
    pair = tok.encode("first one", "second one")
    assert pair.ids.count(text.SEP_ID) == 2 and pair.type_ids[-1] == 1
    assert tok.decode([text.MASK_ID, *tok.encode("axis", add_special_tokens=False).ids],
                      skip_special_tokens=False).startswith("[MASK]")
    files = list((cache / "tokenizers").glob(f"*-{VOCAB}-{corpus.split_sha256[:20]}.json"))
    assert len(files) == 1
    again = text.get_tokenizer(VOCAB, "builtin", cache_dir=cache, max_files_per_package=FILES)
    assert text.tokenizer_sha256(again) == text.tokenizer_sha256(tok)
    with pytest.raises(ValueError, match="vocab_size"):
        text.get_tokenizer(3, corpus, cache_dir=cache)


def test_wordpiece_vocabulary_rule_by_hand():
    # worked by hand: alphabet = [UNK], a b q y z (any position), ##a ##b ##q (after a first character);
    # pairs (z,##a)=2 (##a,##b)=2+1=3 (y,##a)=1 (z,##q)=2 -> merge ##a+##b = "##ab" (count 3);
    # then (z,##ab)=2 ties with (z,##q)=2: the older token ##q (id 8) beats ##ab (id 9) -> "zq",
    # although "##ab" < "##q" as strings; then "zab" (2), "yab" (1); then every word is one token
    counts = {"zab": 2, "yab": 1, "zq": 2}
    full = ["[UNK]", "a", "b", "q", "y", "z", "##a", "##b", "##q", "##ab", "zq", "zab", "yab"]
    assert text.wordpiece_vocabulary(counts, 100, special_tokens=["[UNK]"]) == full
    assert text.wordpiece_vocabulary(dict(reversed(counts.items())), 11, special_tokens=["[UNK]"]) == full[:11]
    assert text.wordpiece_vocabulary({**counts, "never": 0}, 9, special_tokens=["[UNK]"]) == full[:9]
    # overlapping occurrences: "aaaa" = a ##a ##a ##a has (##a,##a) twice -> merged left to right into
    # a ##aa ##a; then (a,##aa) ties with (##aa,##a): ids (1, 3) < (3, 2) -> "aaa"; then "aaaa"
    assert text.wordpiece_vocabulary({"aaaa": 1}, 100, special_tokens=["[UNK]"]) == [
        "[UNK]", "a", "##a", "##aa", "aaa", "aaaa"]
    with pytest.raises(ValueError, match="vocab_size=8 .* 9 tokens"):
        text.wordpiece_vocabulary(counts, 8, special_tokens=["[UNK]"])
    with pytest.raises(ValueError, match="word_counts.*'zab': -1"):
        text.wordpiece_vocabulary({"zab": -1}, 50)
    with pytest.raises(ValueError, match="vocab_size"):
        text.wordpiece_vocabulary(counts, 1, special_tokens=["[UNK]"])


def _zipf_corpus(path, n_docs=300, n_words=250, seed=5):
    """Random words (letters, digits, accented capitals) with Zipf frequencies: many equal counts."""
    g = torch.Generator().manual_seed(seed)
    letters = list("abcdefghijklmnopqrstuvwxyz0123456789") + ["É", "Ü", "ß", "Ç"]
    vocab = ["".join(letters[int(i)] for i in torch.randint(len(letters), (int(torch.randint(1, 9, (1,),
             generator=g)),), generator=g)) for _ in range(n_words)]
    weights = 1.0 / torch.arange(1, n_words + 1, dtype=torch.float64)
    with open(path, "w", encoding="utf-8") as fh:
        for _ in range(n_docs):
            idx = torch.multinomial(weights, int(torch.randint(3, 30, (1,), generator=g)), True, generator=g)
            fh.write(json.dumps({"text": " ".join(vocab[int(i)] for i in idx)}, ensure_ascii=False) + "\n")
    return str(path)


_TRAIN_IN_SUBPROCESS = """
import json, sys
from ablations.tasks import text
tok = text.get_tokenizer(int(sys.argv[1]), sys.argv[2], cache_dir=sys.argv[3])
print(json.dumps({"sha256": text.tokenizer_sha256(tok), "vocab": tok.get_vocab()}))
"""


def test_tokenizer_deterministic_across_processes(tmp_path):
    """Trained from scratch in two fresh interpreters (different hash seeds, own caches): one tokenizer.
    The library's own trainer fails this (its ``##`` ids follow a per-process random hash order)."""
    corpus_path = _zipf_corpus(tmp_path / "zipf.jsonl")
    vocab_size = 300
    results = []
    for run, hash_seed in enumerate(("1", "2")):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run([sys.executable, "-c", _TRAIN_IN_SUBPROCESS, str(vocab_size), corpus_path,
                              str(tmp_path / f"cache{run}")], env=env, capture_output=True, text=True,
                             timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    assert results[0]["vocab"] == results[1]["vocab"]
    assert results[0]["sha256"] == results[1]["sha256"]
    tok = text.get_tokenizer(vocab_size, corpus_path, cache_dir=tmp_path / "cache-here")
    assert text.tokenizer_sha256(tok) == results[0]["sha256"] and tok.get_vocab_size() == vocab_size
    # a usable WordPiece tokenizer: special tokens at 0..4, never split; texts round-trip without [UNK]
    assert [tok.token_to_id(t) for t in text.SPECIAL_TOKENS] == list(range(5))
    vocab = tok.get_vocab()  # continuation characters and longer continuation pieces
    assert "##a" in vocab and any(t.startswith("##") and len(t) > 3 for t in vocab)
    assert text.MASK_ID in tok.encode("abc [MASK] abc", add_special_tokens=False).ids
    corpus = text.load_corpus(corpus_path)
    for doc in corpus.documents[:50] + corpus.split("val")[:50]:
        enc = tok.encode(doc.text)
        assert enc.ids[0] == text.CLS_ID and enc.ids[-1] == text.SEP_ID and text.UNK_ID not in enc.ids
        assert tok.decode(enc.ids) == " ".join(tok.normalizer.normalize_str(doc.text).split())


def test_wordpiece_vocabulary_matches_library_trainer_up_to_ties(corpus):
    """Same training rule as ``tokenizers.trainers.WordPieceTrainer``: the token sets agree except for
    the library's random tie-breaking (a handful of low-count merges)."""
    from tokenizers import Tokenizer, models, trainers
    train = [d.text for d in corpus.split("train")]
    reference = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    reference.normalizer, reference.pre_tokenizer = text._bert_text_pipeline()
    reference.train_from_iterator(train, trainers.WordPieceTrainer(
        vocab_size=VOCAB, special_tokens=list(text.SPECIAL_TOKENS), show_progress=False))
    ours = text.wordpiece_vocabulary(text.count_words(train), VOCAB)
    assert len(ours) == len(set(ours)) == VOCAB == reference.get_vocab_size()
    assert len(set(ours) ^ set(reference.get_vocab())) <= 0.02 * VOCAB
    assert ours[:5] == list(text.SPECIAL_TOKENS)


# ----------------------------------------------------------------------------------------- masking
def test_mask_tokens_statistics():
    g = torch.Generator().manual_seed(0)
    vocab = 1000
    ids = torch.randint(5, vocab, (400, 512), generator=g)
    ids[:, 0] = text.CLS_ID
    ids[:, 100] = text.SEP_ID
    attention = torch.ones_like(ids, dtype=torch.bool)
    attention[:, 400:] = False
    ids[:, 400:] = text.PAD_ID
    masked, labels = text.mask_tokens(ids, attention, torch.Generator().manual_seed(1), vocab)
    selected = labels != IGNORE_INDEX
    candidates = attention & (ids >= 5)
    n_cand = int(candidates.sum())
    assert not bool((selected & ~candidates).any())  # never special tokens or padding
    assert torch.equal(labels[selected], ids[selected])
    assert torch.equal(masked[~selected], ids[~selected])  # only selected positions change
    rate = int(selected.sum()) / n_cand
    sd = math.sqrt(0.15 * 0.85 / n_cand)
    assert abs(rate - 0.15) < 5 * sd
    n_sel = int(selected.sum())
    to_mask = int((masked[selected] == text.MASK_ID).sum()) / n_sel
    unchanged = int((masked[selected] == ids[selected]).sum()) / n_sel
    changed = masked[selected][(masked[selected] != text.MASK_ID) & (masked[selected] != ids[selected])]
    # a random replacement equal to the original (prob 1/995) counts as unchanged
    assert abs(to_mask - 0.8) < 0.01 and abs(unchanged - (0.1 + 0.1 / 995)) < 0.01
    assert abs(len(changed) / n_sel - 0.1 * 994 / 995) < 0.01
    assert bool(((changed >= 5) & (changed < vocab)).all())
    # rows too short to be selected by chance still get one masked token
    one = torch.tensor([[text.CLS_ID, 7, 8, text.SEP_ID]])
    for s in range(20):
        _, lab = text.mask_tokens(one, torch.ones_like(one, dtype=torch.bool), torch.Generator().manual_seed(s), 50)
        assert int((lab != IGNORE_INDEX).sum()) >= 1 and bool((lab[0, [0, 3]] == IGNORE_INDEX).all())


def test_pack_sequences_layout():
    ids, mask = text.pack_sequences([[10, 11, 12], [13], [14, 15]], seq_len=4)
    c, s, p = text.CLS_ID, text.SEP_ID, text.PAD_ID
    # stream: 10 11 12 S 13 S 14 15 S -> chunks of 3 after [CLS]
    assert ids.tolist() == [[c, 10, 11, 12], [c, s, 13, s], [c, 14, 15, s]]
    assert bool(mask.all())
    ids, mask = text.pack_sequences([[10, 11]], seq_len=5)
    assert ids.tolist() == [[c, 10, 11, s, p]] and mask.tolist() == [[True, True, True, True, False]]


# -------------------------------------------------------------------------------------------- mlm
def _jsonl_corpus(tmp_path, n=400):
    words = ("matrix vector sequence mixer token attention layer model state space convolution kernel "
             "length batch head rank train value query key").split()
    g = torch.Generator().manual_seed(3)
    with open(tmp_path / "c.jsonl", "w") as fh:
        for i in range(n):
            idx = torch.randint(len(words), (int(torch.randint(5, 40, (1,), generator=g)),), generator=g)
            fh.write(json.dumps({"text": " ".join(words[j] for j in idx)}) + "\n")
    return str(tmp_path / "c.jsonl")


def test_mlm_task_local_corpus(tmp_path, cache):
    path = _jsonl_corpus(tmp_path)
    task = tasks.build("mlm", corpus=path, seq_len=32, vocab_size=120, cache_dir=str(cache))
    assert task.kind == "token" and task.num_labels == task.vocab_size == 120
    b1 = task.train_batch(5, 8, seed=0)
    b2 = tasks.build("mlm", corpus=path, seq_len=32, vocab_size=120, cache_dir=str(cache)).train_batch(5, 8, seed=0)
    for k in ("input_ids", "attention_mask", "labels"):
        assert torch.equal(b1[k], b2[k])
        assert b1[k].shape == (8, 32)
    assert not torch.equal(b1["labels"], task.train_batch(6, 8, seed=0)["labels"])
    sel = b1["labels"] != IGNORE_INDEX
    assert bool(sel.any()) and not bool((b1["labels"][sel] < 5).any())
    assert bool((b1["input_ids"][:, 0] == text.CLS_ID).all())
    # every val sequence comes from val documents only: rebuild the packed val set independently
    val_docs = task.corpus.split("val")
    lists = [task.tokenizer.encode(d.text, add_special_tokens=False).ids for d in val_docs]
    expected, _ = text.pack_sequences(lists, 32)
    ev = list(task.eval_batches("val", 7))
    labels = torch.cat([b["labels"] for b in ev])
    inputs = torch.cat([b["input_ids"] for b in ev])
    restored = torch.where(labels != IGNORE_INDEX, labels, inputs)
    assert torch.equal(restored, expected)
    assert torch.equal(labels, torch.cat([b["labels"] for b in task.eval_batches("val", 100)]))

    def oracle(batch):
        lab = batch["labels"].clamp(min=0)
        return torch.nn.functional.one_hot(lab, task.vocab_size).float() * 20
    metrics = task.evaluate(oracle, "val", 16)
    assert metrics["accuracy"] == 1.0 and metrics["loss"] < 1e-6
    table = torch.randn(task.vocab_size, task.vocab_size, generator=torch.Generator().manual_seed(0))
    lookup = lambda b: table[b["input_ids"]]  # noqa: E731  (a fixed, input-dependent predictor)
    keep = labels != IGNORE_INDEX
    logits = table[inputs][keep]
    expected_loss = float(torch.nn.functional.cross_entropy(logits, labels[keep]))
    expected_acc = float((logits.argmax(-1) == labels[keep]).float().mean())
    for bs in (5, 1000):  # streamed over batches = computed at once
        m = task.evaluate(lookup, "val", bs)
        assert m["loss"] == pytest.approx(expected_loss, rel=1e-5) and m["accuracy"] == pytest.approx(expected_acc)
        assert m["perplexity"] == pytest.approx(math.exp(expected_loss), rel=1e-5)
    d = task.describe()
    assert d["corpus"]["sha256"] == task.corpus.sha256 and d["tokenizer_sha256"]
    with pytest.raises(ValueError, match="num_eval_sequences"):
        tasks.build("mlm", corpus=path, seq_len=32, vocab_size=120, num_eval_sequences=10 ** 6, cache_dir=str(cache))
    with pytest.raises(ValueError, match="mask_prob"):
        tasks.build("mlm", corpus=path, mask_prob=1.5, cache_dir=str(cache))


def test_mlm_builtin_small_masking_rate(cache):
    task = tasks.build("mlm", max_files_per_package=FILES, seq_len=64, vocab_size=VOCAB, num_eval_sequences=50,
                       cache_dir=str(cache))
    b = task.train_batch(0, 256, seed=1)
    cand = b["attention_mask"] & ((b["labels"] != IGNORE_INDEX) | (b["input_ids"] >= 5))
    rate = int((b["labels"] != IGNORE_INDEX).sum()) / int(cand.sum())
    assert abs(rate - 0.15) < 0.01
    assert sum(len(x["input_ids"]) for x in task.eval_batches("val", 16)) == 50
    assert task.describe()["corpus"]["spec"]["max_files_per_package"] == FILES


# -------------------------------------------------------------------------------- docstring_package
def test_docstring_package_labels_and_balance(corpus, cache):
    task = tasks.build("docstring_package", seq_len=48, vocab_size=VOCAB, max_files_per_package=FILES,
                       cache_dir=str(cache))
    assert task.kind == "sequence" and task.num_labels == 5
    tok = text.get_tokenizer(VOCAB, corpus, cache_dir=cache)
    # independent labelling: the package prefix of each document's source file
    by_ids = {}
    for d in corpus.documents:
        body = tok.encode(d.text, add_special_tokens=False).ids[:46]
        by_ids.setdefault(tuple([text.CLS_ID, *body, text.SEP_ID]), set()).add(d.source.split(":")[0])
    val_sources = {d.source for d in corpus.split("val")}

    def check(batch):
        for ids, mask, label in zip(batch["input_ids"], batch["attention_mask"], batch["labels"]):
            key = tuple(ids[mask].tolist())
            assert by_ids[key] == {text.PACKAGES[int(label)]}

    batch = task.train_batch(0, 500, seed=0)
    check(batch)
    counts = torch.bincount(batch["labels"], minlength=5).float() / 500
    assert bool((counts - 0.2).abs().max() < 0.07)  # uniform class sampling
    val = list(task.eval_batches("val", 32))
    for b in val:
        check(b)
    val_labels = torch.cat([b["labels"] for b in val])
    assert torch.bincount(val_labels, minlength=5).unique().numel() == 1  # balanced
    # no text in both splits
    train_texts = {" ".join(d.text.lower().split()) for d in task.examples() if d.source not in val_sources}
    val_texts = {" ".join(d.text.lower().split()) for d in task.examples() if d.source in val_sources}
    assert not (train_texts & val_texts)
    cached = tasks.build("docstring_package", seq_len=48, vocab_size=VOCAB, max_files_per_package=FILES,
                         cache_dir=str(cache))  # encoded examples come from the cache this time
    for key in ("input_ids", "attention_mask", "labels"):
        assert torch.equal(task.train_batch(3, 16, 2)[key], cached.train_batch(3, 16, 2)[key])
        assert torch.equal(next(task.eval_batches("val", 999))[key], next(cached.eval_batches("val", 999))[key])
    d = task.describe()
    assert d["tokenizer_sha256"] == text.tokenizer_sha256(tok) and d["labels"] == list(text.PACKAGES)
    perfect = task.evaluate(lambda b: torch.nn.functional.one_hot(b["labels"], 5).float(), "val", 64)
    assert perfect["accuracy"] == 1.0 and perfect["macro_f1"] == 1.0
