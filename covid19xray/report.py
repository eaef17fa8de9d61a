"""A labelled test's report: its metrics with their uncertainty, broken down by source and by
the input check's outcome, each computed and printed here; and the JSON reports.

Ten test images cannot pin a proportion down, so every proportion comes with its 95% Wilson
score interval (SciPy's `binomtest(...).proportion_ci(method="wilson")`): 5 of 5 supports a
sensitivity anywhere from 0.57 to 1. Each is kept as `{"value", "ci95", "successes",
"trials"}`, the shape both `report.json` and `audit.json` use.

A test report scores every image, rejected by the input check or not, as it did before the
check existed: a rejected image never leaves a report silently. `input_check_report` adds,
beside it, the check's counts (in all, by class, and by source when the folder has a
manifest) and the same metrics on the images the check accepted (`ok` and
`unlike_training`). train --external, audit --external and predict --labelled all report
through it.
"""

import json
import math
import os
import platform

import cv2
import numpy as np

from .cli import lazy_import, shown
from .input_check import OK, OUTCOMES, REJECTED, UNLIKE_TRAINING
from .manifest import MANIFEST

keras = lazy_import("keras")
tf = lazy_import("tensorflow")
# imported at first use: --help and a bad flag answer before SciPy and scikit-learn load
scipy = lazy_import("scipy")
stats = lazy_import("scipy.stats")
sklearn = lazy_import("sklearn")
sklearn_metrics = lazy_import("sklearn.metrics")

CONFIDENCE = 0.95


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


# ---------------------------------------------------------------------------------------------
# By source: where each image of a labelled test comes from
# ---------------------------------------------------------------------------------------------


def by_size(sources):
    """The distinct sources of an array of them, the largest first (then by name)."""
    return sorted(set(sources), key=lambda s: (-int((sources == s).sum()), s))


def by_source(sources, true_classes, probabilities, class_names):
    """{source: {"counts", "recall" of each class, and with two classes "sensitivity" and
    "specificity"}} of a labelled test whose images come from `sources` (`nih`, `cohen`, ...:
    `external_set.sources_of`); None without them."""
    if sources is None:
        return None
    sources, predicted = np.array(sources), np.asarray(probabilities).argmax(axis=1)
    true_classes = np.asarray(true_classes)
    results = {}
    for source in by_size(sources):
        mine = sources == source
        recall = {name: metric(int((mine & (true_classes == i) & (predicted == i)).sum()),
                               int((mine & (true_classes == i)).sum()))
                  for i, name in enumerate(class_names)}
        results[source] = {"counts": {name: m["trials"] for name, m in recall.items()},
                           "recall": recall}
        if len(class_names) == 2:
            results[source]["sensitivity"] = recall[class_names[0]]
            results[source]["specificity"] = recall[class_names[1]]
    return results


def describe_by_source(results, class_names):
    """One line per source: its counts and each defined metric with its interval."""
    lines = []
    for source, result in results.items():
        counts = ", ".join(f"{shown(name)} {n}" for name, n in result["counts"].items() if n)
        if len(class_names) == 2:
            named = [("sensitivity", result["sensitivity"]), ("specificity", result["specificity"])]
        else:
            named = [(f"{shown(name)} recall", m) for name, m in result["recall"].items()]
        metrics = ", ".join(metric_line(name, m) for name, m in named if m["trials"])
        lines.append(f"  {shown(source)} ({counts}): {metrics}")
    return lines


def print_by_source(results, folder, class_names):
    """`by_source`'s `results` of a test on `folder`, under a heading (nothing without a
    manifest)."""
    if results:
        print(f"by source ({shown(os.path.join(folder, MANIFEST))}):")
        print("\n".join(describe_by_source(results, class_names)))


# ---------------------------------------------------------------------------------------------
# The input check in a test report
# ---------------------------------------------------------------------------------------------


def _counts(outcomes):
    return {outcome: int(sum(o == outcome for o in outcomes)) for outcome in OUTCOMES}


def input_check_report(outcomes, true_classes, probabilities, class_names, sources=None,
                       positive=0):
    """{"counts", "by_class", "by_source" (None without sources), "accepted", "on_accepted"}:
    the check's outcomes of a labelled test, and the metrics of its accepted images (None when
    they do not hold every class)."""
    outcomes, true_classes = np.asarray(outcomes), np.asarray(true_classes)
    result = {"counts": _counts(outcomes),
              "by_class": {name: _counts(outcomes[true_classes == i])
                           for i, name in enumerate(class_names)},
              "by_source": None}
    if sources is not None:
        sources = np.asarray(sources)
        result["by_source"] = {source: _counts(outcomes[sources == source])
                               for source in by_size(sources)}
    accepted = outcomes != REJECTED
    result["accepted"] = int(accepted.sum())
    every_class = set(true_classes[accepted].tolist()) == set(range(len(class_names)))
    result["on_accepted"] = (classification_metrics(true_classes[accepted],
                                                    np.asarray(probabilities)[accepted],
                                                    class_names, positive)
                             if every_class else None)
    return result


def describe_counts(counts):
    """`97 ok, 12 unlike the training images, 1 rejected`."""
    return (f"{counts[OK]} ok, {counts[UNLIKE_TRAINING]} unlike the training images, "
            f"{counts[REJECTED]} rejected")


def print_counts(result, heading):
    """`heading: 97 ok, ...`, then a line per class and per source."""
    print(f"{heading}: {describe_counts(result['counts'])}")
    for name, counts in result["by_class"].items():
        print(f"  {shown(name)} ({sum(counts.values())}): {describe_counts(counts)}")
    for source, counts in (result["by_source"] or {}).items():
        print(f"  source {shown(source)} ({sum(counts.values())}): {describe_counts(counts)}")


def print_input_check_report(result, class_names):
    """The lines a test report adds for the input check."""
    print_counts(result, f"input check on these {sum(result['counts'].values())} images")
    metrics = result["on_accepted"]
    if metrics is None:
        print(f"on the {result['accepted']} images it accepted: not every class is among them, "
              "no metrics")
        return
    print(f"on the {result['accepted']} images it accepted (ok or unlike the training images):")
    print(f"  {metric_line('acc', metrics['accuracy'])}")
    if len(class_names) == 2:
        print(f"  {metric_line('sensitivity', metrics['sensitivity'])}")
        print(f"  {metric_line('specificity', metrics['specificity'])}")
        print(f"  ROC AUC: {shown_auc(metrics['roc_auc'])}")
        return
    for name, m in metrics["per_class"].items():
        print(f"  {shown(name)}: {metric_line('sensitivity', m['sensitivity'])}, "
              f"{metric_line('PPV', m['ppv'])}")
    print(f"  ROC AUC: {shown_auc(metrics['roc_auc'])} (one-vs-rest, the mean of the classes' "
          "AUCs)")


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
