"""python -m ablations.mqar_baseline: the bag-of-values predictor that docs/results.md compares the MQAR rows with."""
import math
import re

from ablations import mqar_baseline


def test_bag_of_values_beats_chance_and_stays_far_from_recall(capsys):
    mqar_baseline.main()
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["L=64", "L=128"]
    for ln in lines:
        argmax, sampling, ce, chance, chance_loss = map(float, re.findall(r"\d+\.\d+", ln))
        assert math.isclose(chance, 1 / 63, abs_tol=1e-4) and math.isclose(chance_loss, math.log(63), abs_tol=1e-3)
        # 8 values per sequence, some repeated: far above chance over 63 values, far below recall
        assert 5 * chance < sampling < argmax < 0.3 and ce < chance_loss
