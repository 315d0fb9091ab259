"""The masked-LM head applied at selected positions only gives the same logits, loss and gradients as the
full head followed by selection (the trainer relies on this to skip unscored positions)."""
import pytest
import torch
import torch.nn.functional as F

import mixers


def _model(seed=0):
    torch.manual_seed(seed)
    enc = mixers.MixerEncoder(vocab_size=50, d_model=16, n_layers=2, mixer="toeplitz", sequence_aligned=True,
                              max_seq_len=12, headdim=8, qk_dim=4, mlp_ratio=2)
    return mixers.MixerForMaskedLM(enc).double()


def test_selected_positions_match_full_head_incl_gradients():
    torch.manual_seed(1)
    ids = torch.randint(0, 50, (3, 12))
    labels = torch.where(torch.rand(3, 12) < 0.3, torch.randint(0, 50, (3, 12)), torch.full((3, 12), -100))
    labels[0, 0] = 7  # at least one scored position
    keep = labels != -100
    full, sel = _model(), _model()
    lf = F.cross_entropy(full(ids).flatten(0, 1), labels.flatten(), ignore_index=-100)
    out = sel(ids, positions=keep)
    assert out.shape == (int(keep.sum()), 50)
    torch.testing.assert_close(out, full(ids)[keep], rtol=1e-12, atol=1e-12)
    ls = F.cross_entropy(out, labels[keep])
    torch.testing.assert_close(ls, lf, rtol=1e-12, atol=1e-12)
    lf.backward()
    ls.backward()
    for (name, a), b in zip(full.named_parameters(), sel.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("bad", [torch.ones(3, 12), torch.ones(3, 11, dtype=torch.bool)])
def test_positions_must_be_a_boolean_mask_of_the_batch_shape(bad):
    with pytest.raises(ValueError, match="positions must be a boolean mask of shape"):
        _model()(torch.randint(0, 50, (3, 12)), positions=bad)
