"""Classification metrics against scikit-learn."""

import random

import numpy as np
import pytest

from minigpt.metrics import classification_report, confusion_matrix, format_report


@pytest.mark.parametrize("seed", range(3))
def test_metrics_match_scikit_learn(seed):
    sk = pytest.importorskip("sklearn.metrics")
    rng = random.Random(seed)
    names = ["neg", "neu", "pos", "never"]
    y_true = [rng.randrange(4) for _ in range(200)]
    y_pred = [rng.choice([0, 1, 2]) for _ in range(200)]  # class 3 is never predicted
    ours = classification_report(y_true, y_pred, names)
    ref = sk.classification_report(y_true, y_pred, labels=range(4), target_names=names, output_dict=True, zero_division=0)
    for key in [*names, "macro avg", "weighted avg"]:
        for metric in ("precision", "recall", "f1-score", "support"):
            assert ours[key][metric] == pytest.approx(ref[key][metric], abs=1e-12), (key, metric)
    assert ours["accuracy"] == pytest.approx(ref["accuracy"])
    assert np.array_equal(confusion_matrix(y_true, y_pred, 4), sk.confusion_matrix(y_true, y_pred, labels=range(4)))
    assert "macro avg" in format_report(ours, names)
