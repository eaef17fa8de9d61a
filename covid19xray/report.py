"""Metrics with their uncertainty, the plots, and the JSON reports.

Ten test images cannot pin a proportion down, so every proportion comes with its 95% Wilson
score interval (SciPy's `binomtest(...).proportion_ci(method="wilson")`): 5 of 5 supports a
sensitivity anywhere from 0.57 to 1. Each is kept as `{"value", "ci95", "successes",
"trials"}`, the shape both `report.json` and `audit.json` use. The ROC AUC's interval, which the
audit needs, comes from a bootstrap over images (`scipy.stats.bootstrap`, resampling each class
on its own, so every resample has both classes).
"""

import json
import platform
import warnings

import cv2
import numpy as np
import scipy
import scipy.stats
import sklearn
from sklearn.metrics import confusion_matrix, multilabel_confusion_matrix, roc_auc_score

from .cli import lazy_import, shown
from .progress import progress

keras = lazy_import("keras")
tf = lazy_import("tensorflow")

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000
# Resamples computed at once: memory is about 50 bytes x this x the number of images, so an
# audit of thousands of images stays within tens of MB instead of growing with them.
BOOTSTRAP_BATCH = 100


def wilson(successes, trials):
    """The 95% Wilson score interval of successes/trials (SciPy's), or None with no trials."""
    if trials == 0:
        return None
    interval = scipy.stats.binomtest(int(successes), int(trials)).proportion_ci(
        CONFIDENCE, method="wilson")
    return [float(interval.low), float(interval.high)]


def metric(successes, trials):
    """{"value", "ci95", "successes", "trials"}: a proportion and what it rests on."""
    return {"value": float(successes / trials) if trials else None,
            "ci95": wilson(successes, trials), "successes": int(successes),
            "trials": int(trials)}


def describe(name, m):
    """`sensitivity: 1.0000 (95% CI 0.57-1.00)`: the tutorial's line plus its interval."""
    if m["value"] is None:
        return f"{name}: undefined (no images)"
    return f"{name}: {m['value']:.4f} (95% CI {m['ci95'][0]:.2f}-{m['ci95'][1]:.2f})"


def classification_metrics(true_classes, probabilities, class_names):
    """Accuracy, each class's sensitivity and specificity against the rest, and the ROC AUC.

    With two classes the first (covid) is the positive class: `sensitivity` is its recall and
    `specificity` the other class's, the tutorial's two numbers; the AUC ranks images by the
    positive class's probability. With more, the AUC is one-vs-rest, macro-averaged.
    """
    labels = list(range(len(class_names)))
    predicted = probabilities.argmax(axis=1)
    cm = confusion_matrix(true_classes, predicted, labels=labels)
    # per class: [[true negatives, false positives], [false negatives, true positives]]
    per_class_counts = multilabel_confusion_matrix(true_classes, predicted, labels=labels)
    results = {"confusion_matrix": cm.tolist(), "accuracy": metric(np.trace(cm), cm.sum()),
               "per_class": {
                   name: {"sensitivity": metric(tp, tp + fn), "specificity": metric(tn, tn + fp)}
                   for name, ((tn, fp), (fn, tp)) in zip(class_names, per_class_counts)}}
    if len(class_names) == 2:
        results["positive_class"] = class_names[0]
        results["sensitivity"] = results["per_class"][class_names[0]]["sensitivity"]
        results["specificity"] = results["per_class"][class_names[0]]["specificity"]
        results["roc_auc"] = float(roc_auc_score(true_classes == 0, probabilities[:, 0]))
    else:
        results["roc_auc"] = float(roc_auc_score(true_classes, probabilities, labels=labels,
                                                 multi_class="ovr"))
    return results


def print_evaluation(true_classes, probabilities, class_names, results):
    """The tutorial's report on a test set, each number with its 95% interval: classification
    report, confusion matrix, accuracy, sensitivity and specificity (per class beyond two), ROC
    AUC. `results` are the test's `classification_metrics`."""
    from sklearn.metrics import classification_report

    predicted = probabilities.argmax(axis=1)
    # zero_division=0: a model that never predicts a class gets precision 0, not a warning
    print(classification_report(true_classes, predicted, labels=list(range(len(class_names))),
                                target_names=[shown(name) for name in class_names],
                                zero_division=0))
    print(np.array(results["confusion_matrix"]))
    print(describe("acc", results["accuracy"]))
    if len(class_names) == 2:
        print(describe("sensitivity", results["sensitivity"]))
        print(describe("specificity", results["specificity"]))
    else:
        for name, m in results["per_class"].items():
            print(f"{shown(name)}: {describe('sensitivity', m['sensitivity'])}, "
                  f"{describe('specificity', m['specificity'])}")
    print(f"ROC AUC: {results['roc_auc']:.4f}")


def _auc_statistic(positives, negatives, axis=-1):
    """ROC AUC of `positives` against `negatives` scores (ties count half), along `axis`: the
    Mann-Whitney U over the product of the two sizes, from ranks, vectorized for the bootstrap."""
    both = np.concatenate([positives, negatives], axis=axis)
    ranks = scipy.stats.rankdata(both, axis=axis)
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
        warnings.simplefilter("ignore", scipy.stats.DegenerateDataWarning)
        with progress(BOOTSTRAP_RESAMPLES, "AUC bootstrap", unit="resample") as bar:
            def statistic(positives, negatives, axis=-1):
                if positives.ndim > 1:  # a batch of resamples, not the data itself
                    bar.update(int(np.prod(positives.shape[:-1])))
                return _auc_statistic(positives, negatives, axis)

            result = scipy.stats.bootstrap((positives, negatives), statistic, vectorized=True,
                                           paired=False, n_resamples=BOOTSTRAP_RESAMPLES,
                                           batch=BOOTSTRAP_BATCH, confidence_level=CONFIDENCE,
                                           method="percentile",
                                           random_state=np.random.default_rng(seed))
    interval = result.confidence_interval
    return {"value": value, "ci95": [float(interval.low), float(interval.high)]}


# ---------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------


def save_figure(figure, path):
    """Write `figure` to `path` (PNG) and free it."""
    import matplotlib.pyplot as plt

    figure.savefig(path, format="png")
    plt.close(figure)


def plot_history(history):
    """The train/val loss and accuracy per epoch, in the tutorial's style, as a figure."""
    import matplotlib.pyplot as plt

    N = len(history["loss"])
    with plt.style.context("ggplot"):
        fig, ax = plt.subplots()
        ax.plot(np.arange(0, N), history["loss"], label="train_loss")
        ax.plot(np.arange(0, N), history["val_loss"], label="val_loss")
        ax.plot(np.arange(0, N), history["accuracy"], label="train_acc")
        ax.plot(np.arange(0, N), history["val_accuracy"], label="val_acc")
        ax.set_title("Training Loss and Accuracy on COVID-19 Dataset")
        ax.set_xlabel("Epoch #")
        ax.set_ylabel("Loss/Accuracy")
        ax.legend(loc="lower left")
    return fig


def plot_roc(true_classes, probabilities, class_names):
    """The ROC curve on the test split (one curve per class against the rest if more than
    two), with scikit-learn's RocCurveDisplay, which puts each curve's AUC in the legend."""
    import matplotlib.pyplot as plt
    from sklearn.metrics import RocCurveDisplay

    shown_classes = class_names[:1] if len(class_names) == 2 else class_names
    with plt.style.context("ggplot"):
        fig, ax = plt.subplots()
        for c, name in enumerate(shown_classes):
            RocCurveDisplay.from_predictions(
                true_classes == c, probabilities[:, c], ax=ax,
                name=f"{name} vs rest" if len(shown_classes) > 1 else name,
                plot_chance_level=(c == len(shown_classes) - 1))
        ax.set_title("ROC curve on the test split")
        ax.set_xlabel("False positive rate (1 - specificity)")
        ax.set_ylabel("True positive rate (sensitivity)")
        ax.legend(loc="lower right")
    return fig


# ---------------------------------------------------------------------------------------------
# JSON reports
# ---------------------------------------------------------------------------------------------


def versions():
    """The versions that produced a report: enough to repeat it."""
    return {"python": platform.python_version(), "tensorflow": tf.__version__,
            "keras": keras.__version__, "scikit-learn": sklearn.__version__,
            "scipy": scipy.__version__, "numpy": np.__version__, "opencv": cv2.__version__}


def write_json(path, report):
    """`report` as indented JSON. File names that are not UTF-8 are kept as `\\udcXX` escapes,
    which `json.load` turns back into the very names `os.listdir` gives."""
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")


def run_facts(config):
    """The end of every report: what is needed to repeat the run."""
    return {"confidence_level": CONFIDENCE, "seed": config.seed, "flags": config.flags(),
            "versions": versions()}


def counts_per_class(onehot, class_names):
    """{class name: how many of the one-hot rows `onehot` are of it}: `{"covid": 25, ...}`."""
    return {name: int(n) for name, n in zip(class_names, onehot.sum(axis=0))}
