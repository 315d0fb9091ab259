"""What a "bag of values" predictor scores on the lab MQAR task (mqar_bidir, L = 64, vocab 128, 8 pairs).

The predictor ignores which key a value is bound to: it puts probability on the value tokens present in the
sequence, in proportion to how often each occurs (values are drawn with replacement, so some occur twice).
It is the natural plateau of a mixer that learns a content-independent average over positions (compare the
Cauchy rows of results/table2-lab).

    python -m ablations.mqar_baseline

Prints, for L and 2L: the accuracy of the argmax (random tie-break), the expected accuracy of sampling from the
proportional distribution, and its cross-entropy. Drawn with the task's own generator (eval_seed 1234).
"""
import math

import torch

from ablations.tasks.base import IGNORE_INDEX
from ablations.tasks.synthetic import generate_mqar, recall_vocab

VOCAB, PAIRS, N = 128, 8, 4096


def main() -> None:
    values = recall_vocab(VOCAB)[1]
    g = torch.Generator().manual_seed(1234)
    for L in (64, 128):
        ids, labels = generate_mqar(g, N, L, VOCAB, PAIRS, bidirectional=True)
        in_range = (ids >= values.start) & (ids < values.stop)
        counts = torch.zeros(N, VOCAB).scatter_add_(1, ids * in_range, in_range.float())
        counts[:, 0] = 0.0  # positions that are not values were sent to token 0 (PAD, never a label)
        dist = counts / counts.sum(1, keepdim=True)
        rows, cols = (labels != IGNORE_INDEX).nonzero(as_tuple=True)
        truth = labels[rows, cols]
        p_true = dist[rows, truth]
        best = counts[rows] == counts[rows].max(1, keepdim=True).values
        argmax_acc = (best[torch.arange(len(rows)), truth].float() / best.sum(1)).mean()
        print(f"L={L}: argmax accuracy {argmax_acc:.4f}, expected accuracy sampling {p_true.mean():.4f}, "
              f"cross-entropy {(-p_true.log()).mean():.3f} (chance over the 63 values: {1 / len(values):.4f}, "
              f"loss {math.log(len(values)):.3f})")


if __name__ == "__main__":
    main()
