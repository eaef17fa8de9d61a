"""Metrics with their uncertainty, the plots, and the JSON reports.

Ten test images cannot pin a proportion down, so every proportion comes with its 95% Wilson
score interval (SciPy's `binomtest(...).proportion_ci(method="wilson")`): 5 of 5 supports a
sensitivity anywhere from 0.57 to 1. Each is kept as `{"value", "ci95", "successes",
"trials"}`, the shape both `report.json` and `audit.json` use. The ROC AUC's interval, which the
audit needs, comes from a bootstrap over images (`scipy.stats.bootstrap`, resampling each class
on its own, so every resample has both classes).
"""

import json
import math
import platform
import warnings

import cv2
import numpy as np

from .cli import lazy_import, shown
from .progress import progress

keras = lazy_import("keras")
tf = lazy_import("tensorflow")
# imported at first use: --help and a bad flag answer before SciPy and scikit-learn load
scipy = lazy_import("scipy")
stats = lazy_import("scipy.stats")
sklearn = lazy_import("sklearn")
sklearn_metrics = lazy_import("sklearn.metrics")

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000
# Resamples computed at once: memory is about 50 bytes x this x the number of images, so an
# audit of thousands of images stays within tens of MB instead of growing with them.
BOOTSTRAP_BATCH = 100


def wilson(successes, trials):
    """The 95% Wilson score interval of successes/trials (SciPy's), or None with no trials."""
    if trials == 0:
        return None
    interval = stats.binomtest(int(successes), int(trials)).proportion_ci(
        CONFIDENCE, method="wilson")
    return [float(interval.low), float(interval.high)]


def metric(successes, trials):
    """{"value", "ci95", "successes", "trials"}: a proportion and what it rests on."""
    return {"value": float(successes / trials) if trials else None,
            "ci95": wilson(successes, trials), "successes": int(successes),
            "trials": int(trials)}


def metric_line(name, m):
    """`sensitivity: 1.0000 (95% CI 0.57-1.00)`: the tutorial's line plus its interval."""
    if m["value"] is None:
        return f"{name}: undefined (no images)"
    return f"{name}: {m['value']:.4f} (95% CI {m['ci95'][0]:.2f}-{m['ci95'][1]:.2f})"


def one_vs_rest_auc(is_class, scores):
    """The ROC AUC of `scores` for telling one class from the rest, or None when the test
    holds no image of it, or only images of it (no curve to draw)."""
    is_class = np.asarray(is_class, bool)
    if is_class.all() or not is_class.any():
        return None
    return float(sklearn_metrics.roc_auc_score(is_class, scores))


def classification_metrics(true_classes, probabilities, class_names, positive=0):
    """Accuracy, and each class against the rest: its sensitivity (recall), specificity and
    positive predictive value with their 95% intervals, and its one-vs-rest ROC AUC; the macro
    AUC, their mean.

    With two classes, `positive` (the first, covid, unless --positive says otherwise) is the
    positive class: `sensitivity` is its recall and `specificity` the other class's, the
    tutorial's two numbers; `roc_auc` ranks images by its probability. With more, `roc_auc` is
    the one-vs-rest AUC, macro-averaged.
    """
    labels = list(range(len(class_names)))
    predicted = probabilities.argmax(axis=1)
    cm = sklearn_metrics.confusion_matrix(true_classes, predicted, labels=labels)
    # per class: [[true negatives, false positives], [false negatives, true positives]]
    per_class_counts = sklearn_metrics.multilabel_confusion_matrix(true_classes, predicted,
                                                                   labels=labels)
    results = {"confusion_matrix": cm.tolist(), "accuracy": metric(np.trace(cm), cm.sum()),
               "per_class": {
                   name: {"sensitivity": metric(tp, tp + fn), "specificity": metric(tn, tn + fp),
                          "ppv": metric(tp, tp + fp),
                          "auc": one_vs_rest_auc(np.asarray(true_classes) == c,
                                                 probabilities[:, c])}
                   for c, (name, ((tn, fp), (fn, tp))) in enumerate(zip(class_names,
                                                                        per_class_counts))}}
    aucs = [m["auc"] for m in results["per_class"].values() if m["auc"] is not None]
    results["macro_auc"] = float(np.mean(aucs)) if len(aucs) == len(class_names) else None
    if len(class_names) == 2:
        name = class_names[positive]
        results["positive_class"] = name
        results["sensitivity"] = results["per_class"][name]["sensitivity"]
        results["specificity"] = results["per_class"][name]["specificity"]
        results["roc_auc"] = one_vs_rest_auc(np.asarray(true_classes) == positive,
                                             probabilities[:, positive])
    else:  # scikit-learn's one-vs-rest macro AUC: the mean of the classes' AUCs
        results["roc_auc"] = results["macro_auc"]
    return results


UNDEFINED = "undefined (one class only)"


def shown_auc(auc):
    """An AUC as a report prints it: None (a test of one class: no curve) said in words."""
    return UNDEFINED if auc is None else f"{auc:.4f}"


def confusion_table(cm, class_names):
    """The confusion matrix with its class names: rows the true class, columns the predicted."""
    names, corner = [shown(name) for name in class_names], "true \\ predicted"
    first = max(len(name) for name in names + [corner]) + 2
    width = max(len(name) for name in names + [str(cm.max())]) + 2
    rows = [corner.ljust(first) + "".join(name.rjust(width) for name in names)]
    rows += [name.ljust(first) + "".join(str(n).rjust(width) for n in row)
             for name, row in zip(names, cm)]
    return "\n".join(rows)


def is_the_tutorials(class_names, results):
    """Whether a report is the tutorial's: two classes, covid the positive one."""
    return list(class_names) == ["covid", "normal"] and results["positive_class"] == "covid"


def print_evaluation(true_classes, probabilities, class_names, results):
    """The tutorial's report on a test set, each number with its 95% interval: classification
    report, confusion matrix, accuracy, sensitivity and specificity, ROC AUC. Two classes other
    than covid/normal say which is positive; more than two print the matrix with its class
    names, each class's sensitivity, specificity, PPV and AUC against the rest, and the macro
    AUC. `results` are the test's `classification_metrics`."""
    from sklearn.metrics import classification_report

    predicted = probabilities.argmax(axis=1)
    # zero_division=0: a model that never predicts a class gets precision 0, not a warning
    print(classification_report(true_classes, predicted, labels=list(range(len(class_names))),
                                target_names=[shown(name) for name in class_names],
                                zero_division=0))
    cm = np.array(results["confusion_matrix"])
    print(cm if len(class_names) == 2 else confusion_table(cm, class_names))
    print(metric_line("acc", results["accuracy"]))
    if len(class_names) == 2:
        if not is_the_tutorials(class_names, results):
            other = next(name for name in class_names if name != results["positive_class"])
            print(f"positive class: {shown(results['positive_class'])} (sensitivity is its "
                  f"recall, specificity {shown(other)}'s; --positive chooses)")
        print(metric_line("sensitivity", results["sensitivity"]))
        print(metric_line("specificity", results["specificity"]))
        print(f"ROC AUC: {shown_auc(results['roc_auc'])}")
        return
    for name, m in results["per_class"].items():
        print(f"{shown(name)}: {metric_line('sensitivity', m['sensitivity'])}, "
              f"{metric_line('specificity', m['specificity'])}, {metric_line('PPV', m['ppv'])}, "
              f"AUC against the rest {shown_auc(m['auc'])}")
    print(f"ROC AUC: {shown_auc(results['roc_auc'])} (one-vs-rest, the mean of the classes' "
          "AUCs)")


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


def plot_roc(true_classes, probabilities, class_names, positive=0):
    """The ROC curve on the test split (the positive class's with two classes, one curve per
    class against the rest with more), with scikit-learn's RocCurveDisplay, which puts each
    curve's AUC in the legend."""
    import matplotlib.pyplot as plt
    from sklearn.metrics import RocCurveDisplay

    shown_classes = ({positive: class_names[positive]} if len(class_names) == 2
                     else dict(enumerate(class_names)))
    with plt.style.context("ggplot"):
        fig, ax = plt.subplots()
        for n, (c, name) in enumerate(shown_classes.items()):
            RocCurveDisplay.from_predictions(
                true_classes == c, probabilities[:, c], ax=ax,
                name=f"{name} vs rest" if len(shown_classes) > 1 else name,
                plot_chance_level=(n == len(shown_classes) - 1))
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
        json.dump(strict_json(report), f, indent=2, allow_nan=False)
        f.write("\n")


def strict_json(value):
    """`value` with every NaN or infinity (an undefined metric) as None: JSON has neither, and
    Python's `json` would write them as the invalid `NaN`."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(item) for item in value]
    if isinstance(value, np.generic):
        return strict_json(value.item())
    return value


def run_facts(config):
    """The end of every report: what is needed to repeat the run."""
    return {"confidence_level": CONFIDENCE, "seed": config.seed, "flags": config.flags(),
            "versions": versions()}


def counts_per_class(onehot, class_names):
    """{class name: how many of the one-hot rows `onehot` are of it}: `{"covid": 25, ...}`."""
    return {name: int(n) for name, n in zip(class_names, onehot.sum(axis=0))}
