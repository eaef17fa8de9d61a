"""The input check in a test report: how many images it flagged and rejected, and the metrics
on the ones it accepted.

A test report scores every image, rejected or not, as it did before the check existed: a
rejected image never leaves a report silently. `input_check_report` adds, beside it, the
check's counts (in all, by class, and by source when the folder has a manifest) and the same
metrics on the images the check accepted (`ok` and `unlike_training`). train --external, audit
--external and predict --labelled all report through it.
"""

import numpy as np

from .cli import shown
from .external_test import by_size
from .input_check import OK, OUTCOMES, REJECTED, UNLIKE_TRAINING
from .report import classification_metrics, metric_line, shown_auc


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
