"""The BERT-style encoder, its heads, and the parameter table."""
from __future__ import annotations

import pytest
import torch

import mixers


def _encoder(mixer="quasiseparable", sa=True, **kw):
    torch.manual_seed(0)
    kw = {"headdim": 8, "qk_dim": 4, **kw}
    return mixers.MixerEncoder(40, 16, 2, mixer, sa, 12, **kw)


def test_mlm_head_shapes_and_tied_embeddings():
    model = mixers.MixerForMaskedLM(_encoder())
    ids = torch.randint(0, 40, (3, 7))
    logits = model(ids)
    assert logits.shape == (3, 7, 40)
    # tied: the decoder is the embedding table, counted once
    n_unique = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    assert model.num_parameters() == n_unique
    assert model.num_parameters() == model.encoder.num_parameters() + 16 * 16 + 16 + 2 * 16 + 40
    logits.sum().backward()
    assert model.encoder.embeddings.weight.grad is not None


@pytest.mark.parametrize("mixer", ["quasiseparable", "attention", "bidir_concat", "toeplitz"])
def test_classification_mean_pools_real_tokens_only(mixer):
    enc = _encoder(mixer).double()
    model = mixers.MixerForSequenceClassification(enc, num_labels=3).double()
    ids = torch.randint(1, 40, (2, 10))
    mask = torch.arange(10)[None, :] < torch.tensor([[10], [6]])
    logits = model(ids, mask)
    assert logits.shape == (2, 3)
    alone = model(ids[1:, :6])
    torch.testing.assert_close(logits[1:], alone, rtol=1e-10, atol=1e-12)
    ids2 = ids.clone()
    ids2[1, 6:] = 0                                  # other pad ids: same result
    torch.testing.assert_close(model(ids2, mask), logits, rtol=1e-10, atol=1e-12)


def test_regression_head_and_first_token_pooling():
    enc = _encoder("low_rank")
    assert mixers.MixerForSequenceClassification(enc, 1)(torch.randint(0, 40, (2, 5))).shape == (2, 1)
    first = mixers.MixerForSequenceClassification(enc, 2, pooling="first")
    assert first(torch.randint(0, 40, (2, 5))).shape == (2, 2)
    with pytest.raises(ValueError, match="pooling must be one of"):
        mixers.MixerForSequenceClassification(enc, 2, pooling="max")
    with pytest.raises(ValueError, match="num_labels must be an int >= 1"):
        mixers.MixerForSequenceClassification(enc, 0)


def test_encoder_layers_and_options():
    enc = _encoder(mlp_ratio=0, position_embeddings=True, dropout=0.1)
    assert len(enc.blocks) == 2 and len(enc.mlps) == 0 and enc.position_embeddings is not None
    with pytest.raises(ValueError, match="position embeddings are not extendable"):
        enc(torch.randint(0, 40, (1, 13)))
    sa = _encoder()                                   # no position embeddings: any length
    assert sa(torch.randint(0, 40, (1, 24))).shape == (1, 24, 16)
    fixed = _encoder("low_rank", sa=False)
    with pytest.raises(ValueError, match="not extendable"):
        fixed(torch.randint(0, 40, (1, 13)))
    with pytest.raises(ValueError, match=r"input_ids must lie in \[0, vocab_size=40\)"):
        sa(torch.tensor([[1, 40]]))
    with pytest.raises(ValueError, match="input_ids must be a long tensor"):
        sa(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="dropout must be a float in"):
        _encoder(dropout=1.5)


def test_param_table_matches_real_models_and_covers_every_combination():
    small = dict(d_model=16, n_layers=2, vocab_size=40, max_seq_len=12, headdim=8, qk_dim=4)
    rows = mixers.param_table(**small)
    want = {(n, p == "sequence_aligned") for n, ps in mixers.names().items() for p in ps}
    assert {(r["mixer"], r["sequence_aligned"]) for r in rows} == want
    for r in rows:
        if r["mixer"] in ("dense", "low_rank", "quasiseparable", "cauchy"):
            enc = mixers.MixerEncoder(40, 16, 2, r["mixer"], r["sequence_aligned"], 12, position_embeddings=True,
                                      mlp_ratio=0, headdim=8, qk_dim=4)
            assert enc.num_parameters() == r["params"]


def test_param_table_sequence_aligned_minus_fixed_is_the_token_projection():
    """Independent count: SA low-rank adds 2 H d in_proj + conv (weight, bias) channels per layer and
    drops the fixed q, k tables (2 H d rows of max_seq_len)."""
    rows = {(r["mixer"], r["sequence_aligned"]): r["params"] for r in mixers.param_table()}
    H, d, dm, Lmax, layers, k = 12, 16, 768, 128, 12, 7
    ch = 2 * H * d
    want = layers * (ch * dm + ch * (k + 1) - ch * Lmax)
    assert rows[("low_rank", True)] - rows[("low_rank", False)] == want
    # dense's fixed table: one max_seq_len x max_seq_len matrix per head and layer
    assert rows[("dense", False)] - rows[("dft", False)] == layers * H * Lmax * Lmax


def test_param_table_absolute_count_of_the_parameter_free_mixer():
    """Independent count of the dft encoder at BERT-base (the base every other row adds to): token and
    position embeddings, final norm, and per layer in_proj (z | v), conv (weight + bias), gated-norm
    weight, out_proj, pre-norm LayerNorm."""
    rows = {(r["mixer"], r["sequence_aligned"]): r["params"] for r in mixers.param_table()}
    V, dm, di, Lmax, layers, k = 30522, 768, 1536, 128, 12, 7
    layer = dm * 2 * di + di * (k + 1) + di + di * dm + 2 * dm
    assert rows[("dft", False)] == V * dm + Lmax * dm + 2 * dm + layers * layer


def test_mask_is_checked_once_and_an_all_real_mask_is_none_in_the_blocks(monkeypatch):
    """The encoder checks the attention mask once for all layers (each check is a host sync on a GPU); an
    all-real mask reaches the blocks as None and gives exactly the unmasked output; a padded mask reaches
    every block; a bad mask is still a clear error."""
    torch.manual_seed(0)
    enc = mixers.MixerEncoder(40, 16, 3, "quasiseparable", True, 12, headdim=8, qk_dim=4)
    ids = torch.randint(0, 40, (2, 9))
    seen = []
    for block in enc.blocks:
        orig = block.forward
        monkeypatch.setattr(block, "forward", lambda u, mask=None, _o=orig: seen.append(mask) or _o(u, mask))
    real = torch.ones(2, 9, dtype=torch.bool)
    torch.testing.assert_close(enc(ids, real), enc(ids), rtol=0, atol=0)
    assert len(seen) == 6 and all(m is None for m in seen)
    seen.clear()
    padded = real.clone()
    padded[1, 6:] = False
    enc(ids, padded)
    assert len(seen) == 3 and all(m is padded for m in seen)
    with pytest.raises(ValueError, match="right-padded"):
        enc(ids, padded.flip(-1))
    with pytest.raises(ValueError, match=r"input_ids must lie in \[0, vocab_size=40\), got values in \[0, 40\]"):
        enc(torch.tensor([[0, 40]]))
