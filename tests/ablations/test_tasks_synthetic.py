"""MQAR generators: every label is re-derived from the input sequence with a plain dict."""
import pytest
import torch

from ablations import tasks
from ablations.tasks.base import IGNORE_INDEX


def _layout(vocab_size):
    num_keys = (vocab_size - 2) // 2
    return set(range(2, 2 + num_keys)), set(range(2 + num_keys, vocab_size))


def _check_sequence(ids, labels, vocab_size, num_kv_pairs, causal):
    """Independent checker: parse pairs (a key followed by a value) and queries (a key not followed
    by a value); every query must be labelled with its pair's value, nothing else labelled.
    Returns the number of queries that precede their pair."""
    keys, values = _layout(vocab_size)
    ids, labels = ids.tolist(), labels.tolist()
    pairs, pair_pos, queries = {}, {}, []
    for i, tok in enumerate(ids):
        if tok in keys:
            if i + 1 < len(ids) and ids[i + 1] in values:
                assert tok not in pairs, "a key is paired twice"
                pairs[tok], pair_pos[tok] = ids[i + 1], i
            else:
                queries.append(i)
        else:
            assert tok == 1 or tok in values, f"unexpected token {tok}"
    assert len(pairs) == num_kv_pairs and len(queries) == num_kv_pairs
    assert sorted(ids[q] for q in queries) == sorted(pairs)  # each key queried exactly once
    labelled = [i for i, lab in enumerate(labels) if lab != IGNORE_INDEX]
    assert labelled == queries
    for q in queries:
        assert labels[q] == pairs[ids[q]]
    if causal:
        assert all(pair_pos[ids[q]] < q for q in queries)
        assert ids[:2 * num_kv_pairs:2] == list(pairs)  # pairs form the prefix
    return sum(pair_pos[ids[q]] > q for q in queries)


@pytest.mark.parametrize("name", ["mqar", "mqar_bidir"])
@pytest.mark.parametrize("seq_len,vocab_size,num_kv_pairs", [(24, 20, 8), (64, 100, 5), (9, 12, 3), (3, 6, 1)])
def test_labels_rederived(name, seq_len, vocab_size, num_kv_pairs):
    task = tasks.build(name, seq_len=seq_len, vocab_size=vocab_size, num_kv_pairs=num_kv_pairs, num_examples=7)
    batch = task.train_batch(step=3, batch_size=16, seed=5)
    assert batch["input_ids"].shape == (16, seq_len) and batch["input_ids"].dtype == torch.long
    assert batch["attention_mask"].dtype == torch.bool and bool(batch["attention_mask"].all())
    for ids, labels in zip(batch["input_ids"], batch["labels"]):
        _check_sequence(ids, labels, vocab_size, num_kv_pairs, causal=(name == "mqar"))
    val = list(task.eval_batches("val", batch_size=3))
    assert [len(b["input_ids"]) for b in val] == [3, 3, 1]
    for b in val:
        for ids, labels in zip(b["input_ids"], b["labels"]):
            _check_sequence(ids, labels, vocab_size, num_kv_pairs, causal=(name == "mqar"))


def test_bidir_queries_precede_pairs_half_the_time():
    task = tasks.build("mqar_bidir", seq_len=64, vocab_size=64, num_kv_pairs=8)
    batch = task.train_batch(0, 200, seed=0)
    before = sum(_check_sequence(i, l, 64, 8, causal=False) for i, l in zip(batch["input_ids"], batch["labels"]))
    frac = before / (200 * 8)
    assert 0.45 < frac < 0.55, frac  # binomial sd ~0.012


def test_causal_query_positions_cover_query_region():
    task = tasks.build("mqar", seq_len=40, vocab_size=50, num_kv_pairs=4)
    labels = task.train_batch(0, 500, seed=1)["labels"]
    hits = (labels != IGNORE_INDEX).float().mean(0)
    assert hits[:8].sum() == 0
    # uniform over the 32 query slots: each slot is used with probability 4/32
    assert torch.allclose(hits[8:], torch.full((32,), 4 / 32), atol=0.05)


@pytest.mark.parametrize("name", ["mqar", "mqar_bidir"])
def test_determinism_and_fixed_eval(name):
    a = tasks.build(name, seq_len=32, vocab_size=40, num_kv_pairs=4, num_examples=10, extrapolate=True)
    b = tasks.build(name, seq_len=32, vocab_size=40, num_kv_pairs=4, num_examples=10, extrapolate=True)
    for key in ("input_ids", "labels"):
        assert torch.equal(a.train_batch(7, 4, seed=2)[key], b.train_batch(7, 4, seed=2)[key])
    assert not torch.equal(a.train_batch(7, 4, 2)["input_ids"], a.train_batch(8, 4, 2)["input_ids"])
    assert not torch.equal(a.train_batch(7, 4, 2)["input_ids"], a.train_batch(7, 4, 3)["input_ids"])
    assert a.eval_splits == ("val", "val_2x")
    for split, length in (("val", 32), ("val_2x", 64)):
        assert a.split_seq_len(split) == length
        ea = torch.cat([x["input_ids"] for x in a.eval_batches(split, 4)])
        eb = torch.cat([x["input_ids"] for x in b.eval_batches(split, 3)])
        assert ea.shape == (10, length) and torch.equal(ea, eb)
        for x in a.eval_batches(split, 10):
            for ids, labels in zip(x["input_ids"], x["labels"]):
                _check_sequence(ids, labels, 40, 4, causal=(name == "mqar"))
    c = tasks.build(name, seq_len=32, vocab_size=40, num_kv_pairs=4, num_examples=10, eval_seed=99)
    assert c.eval_splits == ("val",)
    assert not torch.equal(c.eval_set("val")[0], a.eval_set("val")[0])


def test_evaluate_perfect_and_chance_predictors():
    task = tasks.build("mqar_bidir", seq_len=30, vocab_size=30, num_kv_pairs=5, num_examples=20)

    def oracle(batch):
        logits = torch.full((*batch["labels"].shape, task.vocab_size), -10.0)
        lab = batch["labels"].clamp(min=0)
        return logits.scatter(-1, lab.unsqueeze(-1), 10.0)

    assert task.evaluate(oracle, "val", 8)["accuracy"] == 1.0
    uniform = task.evaluate(lambda b: torch.zeros(*b["labels"].shape, task.vocab_size), "val", 8)
    assert uniform["loss"] == pytest.approx(torch.log(torch.tensor(30.0)).item(), rel=1e-6)


@pytest.mark.parametrize("options,bad", [
    (dict(seq_len=10, num_kv_pairs=4), "seq_len"),
    (dict(vocab_size=9, num_kv_pairs=4, seq_len=20), "vocab_size"),
    (dict(num_kv_pairs=0), "num_kv_pairs"),
    (dict(num_examples=0), "num_examples"),
    (dict(extrapolate="yes"), "extrapolate"),
    (dict(seq_len=12.0, num_kv_pairs=2), "seq_len"),
    (dict(colour="red"), "colour"),
])
def test_bad_options(options, bad):
    with pytest.raises(ValueError, match=bad):
        tasks.build("mqar", **options)


def test_bad_split_and_unknown_task():
    task = tasks.build("mqar", seq_len=12, vocab_size=12, num_kv_pairs=2)
    with pytest.raises(ValueError, match="val_2x"):
        list(task.eval_batches("val_2x", 4))
    with pytest.raises(KeyError, match="nope"):
        tasks.build("nope")
    assert {"mqar", "mqar_bidir"} <= set(tasks.names())
