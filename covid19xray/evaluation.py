"""A labelled set's report, as train, predict and the audit print it: the tutorial's metrics
with their 95% intervals, then calibration (`report_on`); and train's test on an external
folder (`test_on_external`)."""

import contextlib
import dataclasses

import numpy as np

from .calibration import calibration, print_calibration
from .external_set import load_external
from .head import head_probabilities
from .report import (
    by_source,
    classification_metrics,
    input_check_report,
    print_by_source,
    print_evaluation,
    print_input_check_report,
)
from .splits import class_counts


def report_on(true_classes, probabilities, class_names, positive=0, seed=0):
    """Print the tutorial's report on a labelled set (classification report, confusion matrix,
    accuracy, sensitivity, specificity, ROC AUC, each with its interval) and its calibration;
    returns the metrics, `calibration` among them."""
    results = classification_metrics(true_classes, probabilities, class_names, positive)
    print_evaluation(true_classes, probabilities, class_names, results)
    # whether its probabilities can be read as probabilities (covid19xray.calibration)
    results["calibration"] = calibration(true_classes, probabilities, class_names, positive,
                                         seed)
    print_calibration(results["calibration"])
    return results


@dataclasses.dataclass(frozen=True)
class ExternalTest:
    """One external folder's test (`test_on_external`)."""

    report: dict  # report.json's `external` entry for the folder
    true_classes: np.ndarray  # each image's true class
    probabilities: np.ndarray  # the model's, one row per image


def test_on_external(folder, dataset, seed, head, extractors, split, input_check):
    """Test the trained model on an external folder, as on the test split: the same report,
    under its own heading, then what the input check says of its images. Images identical to
    one of --dataset are refused."""
    with contextlib.closing(load_external(folder, split.class_names,
                                          split.digests)) as external_set:
        # one VGG16 pass of each external image gives both
        extF, descriptions = extractors.whole.outputs(external_set.store, external_set.paths)
    print(f"[INFO] {len(external_set.paths)} external images "
          f"({class_counts(external_set.onehot, split.class_names)})")
    probabilities = head_probabilities(head, extF)
    true_classes = external_set.onehot.argmax(axis=1)
    results = report_on(true_classes, probabilities, split.class_names, split.positive, seed)
    sources = by_source(external_set.sources, true_classes, probabilities, split.class_names)
    print_by_source(sources, folder, split.class_names)
    screened = input_check_report(input_check.outcomes(input_check.distances(descriptions)),
                                  true_classes, probabilities, split.class_names,
                                  external_set.sources, split.positive)
    print_input_check_report(screened, split.class_names)
    return ExternalTest({**external_set.facts(dataset, split.class_names), **results,
                         "by_source": sources, "input_check": screened},
                        true_classes, probabilities)
