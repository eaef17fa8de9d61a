"""covid19xray.auc_interval: the ROC AUC with its bootstrap interval (the audit's probes)."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from covid19xray.auc_interval import auc_with_interval


def test_auc_interval_is_the_auc_with_a_bootstrap_around_it():
    rng = np.random.default_rng(0)
    is_positive = np.repeat([True, False], 40)
    scores = np.where(is_positive, rng.normal(1, 1, 80), rng.normal(0, 1, 80))
    scores[3] = scores[50]  # a tie counts half, as in scikit-learn
    auc = auc_with_interval(is_positive, scores)
    assert auc["value"] == pytest.approx(roc_auc_score(is_positive, scores))
    low, high = auc["ci95"]
    assert low < auc["value"] < high and 0.1 < high - low < 0.4
    # perfectly separated classes: every resample separates them too
    separated = auc_with_interval(is_positive, is_positive + rng.uniform(0, .5, 80))
    assert separated == {"value": 1.0, "ci95": [1.0, 1.0]}
    assert auc_with_interval(is_positive, scores, seed=0) == auc  # seeded: repeatable
