"""The ROC AUC with its 95% interval, for the audit's probes: a percentile bootstrap over
images (`scipy.stats.bootstrap`), each class resampled on its own, so that every resample has
both classes. The AUCs of a training report are printed without one (`report`)."""

import warnings

import numpy as np

from .cli import lazy_import
from .progress import progress
from .report import CONFIDENCE

# imported at first use: --help and a bad flag answer before SciPy loads
stats = lazy_import("scipy.stats")

BOOTSTRAP_RESAMPLES = 2000
# Resamples computed at once: memory is about 50 bytes x this x the number of images, so an
# audit of thousands of images stays within tens of MB instead of growing with them.
BOOTSTRAP_BATCH = 100


def _auc_statistic(positives, negatives, axis=-1):
    """ROC AUC of `positives` against `negatives` scores (ties count half), along `axis`: the
    Mann-Whitney U over the product of the two sizes, from ranks, vectorized for the bootstrap."""
    both = np.concatenate([positives, negatives], axis=axis)
    ranks = stats.rankdata(both, axis=axis)
    n_pos, n_neg = positives.shape[axis], negatives.shape[axis]
    rank_sum = np.take(ranks, np.arange(n_pos), axis=axis).sum(axis=axis)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def auc_with_interval(is_positive, scores, seed=0):
    """{"value", "ci95"}: the ROC AUC of `scores` for `is_positive`, with a 95% percentile
    bootstrap interval (each class resampled on its own, BOOTSTRAP_RESAMPLES times)."""
    is_positive = np.asarray(is_positive, bool)
    positives, negatives = scores[is_positive], scores[~is_positive]
    value = float(_auc_statistic(positives, negatives))
    with warnings.catch_warnings():
        # classes that every resample separates perfectly give the interval [1, 1]; SciPy
        # warns that such a distribution is degenerate, which is the point
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        with progress(BOOTSTRAP_RESAMPLES, "AUC bootstrap", unit="resample") as bar:
            def statistic(positives, negatives, axis=-1):
                if positives.ndim > 1:  # a batch of resamples, not the data itself
                    bar.update(int(np.prod(positives.shape[:-1])))
                return _auc_statistic(positives, negatives, axis)

            result = stats.bootstrap((positives, negatives), statistic, vectorized=True,
                                           paired=False, n_resamples=BOOTSTRAP_RESAMPLES,
                                           batch=BOOTSTRAP_BATCH, confidence_level=CONFIDENCE,
                                           method="percentile",
                                           random_state=np.random.default_rng(seed))
    interval = result.confidence_interval
    return {"value": value, "ci95": [float(interval.low), float(interval.high)]}


def macro_auc_with_interval(true_classes, probabilities, seed=0):
    """{"value", "ci95"}: the mean over the classes of each one's ROC AUC against the rest,
    with a 95% percentile bootstrap interval (each class resampled on its own, as
    `auc_with_interval` does, BOOTSTRAP_RESAMPLES times)."""
    true_classes = np.asarray(true_classes)
    members = [np.flatnonzero(true_classes == c) for c in range(probabilities.shape[1])]

    def macro(picks):  # picks[c]: (resamples, images of c) indices
        aucs = [_auc_statistic(probabilities[picks[c], c],
                               np.concatenate([probabilities[picks[d], c]
                                               for d in range(len(picks)) if d != c], axis=-1))
                for c in range(len(picks))]
        return np.mean(aucs, axis=0)

    value = float(macro([m[None] for m in members])[0])
    rng, resampled = np.random.default_rng(seed), []
    for start in range(0, BOOTSTRAP_RESAMPLES, BOOTSTRAP_BATCH):
        size = min(BOOTSTRAP_BATCH, BOOTSTRAP_RESAMPLES - start)
        resampled.append(macro([rng.choice(m, size=(size, len(m))) for m in members]))
    low, high = np.percentile(np.concatenate(resampled), [2.5, 97.5])
    return {"value": value, "ci95": [float(low), float(high)]}
