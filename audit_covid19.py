"""Audit a dataset for shortcuts: can the tutorial's model tell the classes apart without the lungs?

A model trained on 50 X-rays from two sources can learn the sources instead of the disease
(DeGrave et al., "AI for radiographic COVID-19 detection selects shortcuts over signal", Nature
Machine Intelligence 2021). Ten test images cannot show it. This script asks the data directly,
with every image a test image once:

1. Probe. K-fold cross-validation of the tutorial's head (the same frozen VGG16, head, optimizer
   and epochs as `train_covid19.py --cache-features`) on three variants of every image: `full`;
   `lungs_hidden`, the central box that covers the lung fields of a PA film blacked out; and
   `lungs_only`, everything outside that box blacked out. If the classes are told apart with
   the lungs hidden, the model can pass without looking at the lungs: a shortcut.
2. Confounds: file and image properties (size, grey or colour, bit depth, format, file size,
   brightness) that alone separate the classes.
3. Duplicates: exact and near copies, within and across classes (across: a label error).

Usage:
    python audit_covid19.py --dataset dataset
    python audit_covid19.py --dataset dataset --weights imagenet --folds 5 --report audit.json
    python audit_covid19.py --dataset dataset --external external

Writes `audit.json` and `audit.png`, and prints a table and a verdict. Folds are stratified by
class and, when the dataset has the builders' `manifest.csv`, grouped by patient. Every
variant's features are kept in the feature cache that `train_covid19.py` fills (the `full` ones
are its default run's test features; `--no-cache` keeps none). Two
classes or more: with two, the first in sorted order (covid) is the positive one; with more,
each class is probed against the rest (does any class separate without the lungs?).
"""

import contextlib
import dataclasses
import sys

import numpy as np

from covid19xray.auc_interval import auc_with_interval, macro_auc_with_interval
from covid19xray.audit_output import (
    VARIANTS,
    plot_audit,
    print_confounds_and_duplicates,
    print_external,
    print_probes,
)
from covid19xray.cache import cache_line
from covid19xray.calibration import calibration
from covid19xray.cli import ArgumentParser, UserError, cli, lazy_import, positive, shown
from covid19xray.config import FOLDS, RunConfig, add_flags, flag
from covid19xray.confounds import (
    CONFOUND_AUC,
    NEAR_DUPLICATE_BITS,
    NEAR_DUPLICATE_CORRELATION,
    describe_properties,
    find_duplicates,
    measure,
)
from covid19xray.external_set import check_classes, load_external
from covid19xray.extractor import make_extractors
from covid19xray.head import (
    compile_head,
    fit_head,
    head_probabilities,
    make_head,
    training_batches,
)
from covid19xray.input_check import REJECTED, fit_input_check
from covid19xray.layout import load_dataset
from covid19xray.lungs import find_lungs, lung_box
from covid19xray.manifest import MANIFEST
from covid19xray.model import build_model, load_vgg16
from covid19xray.plots import save_figure
from covid19xray.preflight import check_paths
from covid19xray.progress import progress
from covid19xray.report import (
    by_source,
    classification_metrics,
    counts_per_class,
    input_check_report,
    run_facts,
    write_json,
)
from covid19xray.splits import class_counts, cv_folds, encode_labels, patients_of
from covid19xray.transforms import UNCHANGED
from covid19xray.writing import commit_outputs

tf = lazy_import("tensorflow")

# The verdict: a shortcut when, with the lungs hidden, the AUC's 95% interval lies above chance
# and the AUC itself is at least this.
SHORTCUT_AUC = 0.8



@dataclasses.dataclass(frozen=True, kw_only=True)
class AuditConfig(RunConfig):
    """Everything the audit is told, built once from the flags (`parse_args`): each field is its
    flag, with its default and help (`config.flag`)."""

    folds: int = flag(FOLDS, type=positive(int), help="cross-validation folds")
    external_folder: str | None = flag(None, option="--external", metavar="DIR", help=(
        "also train each variant's head on all of --dataset and test it on this labelled "
        "folder from another source: internal against external AUC"))
    report: str = flag("audit.json", short="-r", help="output JSON report")
    plot: str = flag("audit.png", short="-p", help="output figure, PNG")

    def input_folders(self):
        """The folders the audit reads images from: (flag, folder)."""
        return [("--dataset", self.dataset),
                *([("--external", self.external_folder)] if self.external_folder else [])]

    def outputs(self):
        """The two outputs, in the order they are written: (path, flag, suffix)."""
        return [(self.report, "--report", ".json"), (self.plot, "--plot", ".png")]


def parse_args(argv=None):
    ap = ArgumentParser(description="Can the classes of a chest X-ray dataset be told apart "
                                    "without the lungs? Cross-validated probes, confounds and "
                                    "duplicates. For education only.")
    add_flags(ap, AuditConfig)
    args = ap.parse_args(argv)
    if args.folds < 2:
        ap.error(f"--folds must be 2 or more, got {args.folds}")
    return AuditConfig.from_flags(args)


# ---------------------------------------------------------------------------------------------
# The probe
# ---------------------------------------------------------------------------------------------


def variant_transforms(lungs):
    """What each variant does to an image before VGG16: {variant: transform}. Each mask names
    its box, or each image its own mask, in the feature cache's key, so that features masked
    otherwise are never reused."""
    return {"full": UNCHANGED, "lungs_hidden": lungs.hidden, "lungs_only": lungs.only}


def cross_validate(config, head, initial, features, onehot, folds, what):
    """Out-of-fold probabilities: for each fold, a fresh head (the weights `initial`) trained on
    the other folds' features as train_covid19.py --cache-features trains it, then applied to
    the fold. `head` is compiled (`probe_variants`); `what` names the step in its progress
    bar."""
    probabilities = np.zeros(onehot.shape, np.float32)
    with progress(len(folds), what, unit="head") as bar:
        for train, test in folds:
            # A fresh head: the same initial weights and a new optimizer state (its step
            # count, which drives the learning-rate decay, included). One compiled step serves
            # every fold of every variant: compiling again would only trace it again.
            head.set_weights(initial)
            for variable in head.optimizer.variables:
                variable.assign(tf.zeros_like(variable))
            batch_size = min(config.batch_size, len(train))
            fit_head(head, training_batches(features[train], onehot[train], batch_size,
                                            config.seed),
                     max(1, len(train) // config.batch_size), config.epochs)
            probabilities[test] = head_probabilities(head, features[test])
            bar.update(1)
    return probabilities


def probe(true_classes, probabilities, class_names, seed):
    """The cross-validated metrics of one variant, in report.json's shape, with bootstrap
    intervals. Two classes: the positive (first) class's AUC, sensitivity and specificity, as
    the tutorial reports them. More: the macro AUC (each class against the rest, averaged) and
    each class's own AUC against the rest (`per_class_auc`): the audit asks whether any class
    separates from the others without the lungs."""
    metrics = classification_metrics(true_classes, probabilities, class_names)
    result = {"accuracy": metrics["accuracy"], "confusion_matrix": metrics["confusion_matrix"],
              # the out-of-fold probabilities' calibration (covid19xray.calibration)
              "calibration": calibration(true_classes, probabilities, class_names, seed=seed)}
    if len(class_names) == 2:
        return {"auc": auc_with_interval(true_classes == 0, probabilities[:, 0], seed), **result,
                "sensitivity": metrics["sensitivity"], "specificity": metrics["specificity"]}
    return {"auc": macro_auc_with_interval(true_classes, probabilities, seed), **result,
            "per_class_auc": {name: auc_with_interval(true_classes == c, probabilities[:, c],
                                                      seed)
                              for c, name in enumerate(class_names)}}


@dataclasses.dataclass(frozen=True)
class Verdict:
    """Whether the audit found a shortcut, and what it says of it (`verdict`)."""

    shortcut: bool
    text: str


def separates(auc):
    """Whether an AUC is a shortcut's: its interval above chance, and itself at least
    SHORTCUT_AUC."""
    return auc["ci95"][0] > 0.5 and auc["value"] >= SHORTCUT_AUC


def verdict(hidden):
    """The `Verdict`, from the lungs_hidden variant's probe: with more than two classes, a
    shortcut when any class is told from the rest without the lungs."""
    hidden_auc = hidden["auc"]
    value, (low, high) = hidden_auc["value"], hidden_auc["ci95"]
    auc = f"AUC {value:.2f}, 95% CI {low:.2f}-{high:.2f}"
    apart = [f"{shown(name)} (AUC {a['value']:.2f}, 95% CI {a['ci95'][0]:.2f}-"
             f"{a['ci95'][1]:.2f})"
             for name, a in hidden.get("per_class_auc", {}).items() if separates(a)]
    if apart:
        return Verdict(True, "shortcut: without looking at the lungs, these classes are told "
                             f"from the rest: {', '.join(apart)}. A model trained on this "
                             "dataset can score well on them by the image source alone.")
    if separates(hidden_auc):
        return Verdict(True, "shortcut: the classes can be told apart without looking at the "
                             f"lungs (lungs hidden: {auc}). A model trained on this dataset can "
                             "score well by the image source alone.")
    return Verdict(False, "no shortcut found: with the lungs hidden the classes are not told "
                          f"apart well ({auc}; the rule needs an interval above 0.5 and an AUC "
                          f"of at least {SHORTCUT_AUC}). This does not show that a model reads "
                          "the lungs.")


# ---------------------------------------------------------------------------------------------
# Report (confounds and duplicates: covid19xray.confounds; printing: covid19xray.audit_output)
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Folds:
    """The dataset's classes and its cross-validation folds (`classes_and_folds`)."""

    class_names: list  # sorted: the first is the positive class
    onehot: np.ndarray  # each image's one-hot row (float32)
    true_classes: np.ndarray  # each image's class index
    folds: list  # (training indices, test indices) of each fold
    grouped: bool  # whether the folds are grouped by patient
    about: str  # the line that says all this


def classes_and_folds(config, labels, paths):
    """The class names, each image's class, and the folds, grouped by patient where the
    dataset's manifest names them (`Folds`); the audit compares two classes or more."""
    if len(set(labels)) < 2:
        raise UserError(f"the audit compares two classes or more; --dataset "
                        f"{config.dataset!r} has {len(set(labels))} "
                        f"({', '.join(sorted(set(labels)))})")
    onehot, class_names = encode_labels(labels)
    true_classes = onehot.argmax(axis=1)
    patients = patients_of(config.dataset, paths)
    folds = cv_folds(true_classes, config.folds, config.seed, class_names, patients)
    about = (f"{len(paths)} images ({class_counts(onehot, class_names)}), {config.folds}-fold "
             "cross-validation "
             + (f"grouped by patient ({MANIFEST})" if patients is not None
                else f"by image (no {MANIFEST}: images of one patient may sit in two folds)"))
    return Folds(class_names, onehot, true_classes, folds, patients is not None, about)


@dataclasses.dataclass(frozen=True)
class Probes:
    """Each variant's probe (`probe_variants`): cross-validated, and with --external, tested
    there, with the input check's counts on the external images."""

    internal: dict  # {variant: its cross-validated probe}
    on_external: dict  # {variant: its external probe} ({} without --external)
    screened: dict | None  # the input check's counts on the external images


def probe_variants(config, base_model, images, paths, folds, lungs, external_set=None):
    """The probe of every variant: the features of every image (each computed once, or read
    from the cache), then one fresh head per fold. With `external` (an `ExternalSet`), also
    one head trained on every image of --dataset, tested on the external images."""
    model = build_model(base_model, len(folds.class_names))
    transforms = variant_transforms(lungs)
    # every cache made (and its folders checked) before any VGG16 work. The images as they are
    # pass through the whole network once for their features and their description (the
    # external test's input check reads it): one pass where two were made, the same features
    # with or without --external, and those train --cache-features keeps in the same cache.
    # The masked variants pass through the network cropped to what the head reads.
    whole, masked = make_extractors(config, model, [transforms[name] for name in VARIANTS[1:]])
    extractors = [whole, *masked]
    head = make_head(model)
    # every head of every variant starts from these weights, so that no variant's result
    # depends on the variants (or the external test) before it
    initial = head.get_weights()
    compile_head(head, len(folds.class_names), config.lr, config.epochs)
    probes, external_probes, features_by_variant, screened = {}, {}, {}, None
    for name, extractor in zip(VARIANTS, extractors):
        print(f"[INFO] {name}: features of every image, then {config.folds} heads...")
        features_by_variant[name] = extractor.features(images, paths)
        probabilities = cross_validate(config, head, initial, features_by_variant[name],
                                       folds.onehot, folds.folds, f"{name} heads")
        probes[name] = probe(folds.true_classes, probabilities, folds.class_names, config.seed)
    # after every internal probe, so that an external test changes none of their numbers
    if external_set is not None:
        outcomes = check_external_inputs(config, whole, images, paths, external_set)
        for name, extractor in zip(VARIANTS, extractors):
            print(f"[INFO] {name}: one head trained on every image, tested on the external "
                  "images...")
            external_probes[name] = probe_externally(
                config, head, initial, features_by_variant[name], folds.onehot, external_set,
                extractor.features(external_set.store, external_set.paths), name,
                folds.class_names,
                outcomes)
        screened = input_check_report(outcomes, external_set.onehot.argmax(axis=1),
                                      external_probes[VARIANTS[0]]["probabilities"],
                                      folds.class_names, external_set.sources)
    if config.cache_folder is not None:
        # as before: each variant's features, then the descriptions
        print(cache_line([e.caches[0] for e in extractors] + list(whole.caches[1:])))
    for result in external_probes.values():
        del result["probabilities"]  # kept for `input_check_report` only
    return Probes(probes, external_probes, screened)


def check_external_inputs(config, whole, images, paths, external_set):
    """What the input check, fitted on every image of --dataset (the images the external heads
    train on), says of each external image: its outcome. `whole` describes the images
    (`extractor.make_extractors`)."""
    input_check = fit_input_check(whole.outputs(images, paths)[1], config.seed)
    descriptions = whole.outputs(external_set.store, external_set.paths)[1]
    return input_check.outcomes(input_check.distances(descriptions))


def probe_externally(config, head, initial, features, onehot, external_set, external_features,
                     name, class_names, outcomes):
    """One variant's head trained on every image of --dataset (as one more fold), then tested
    on the external images' features: the external probe of that variant, on every image and
    on those the input check accepted (`outcomes`)."""
    everything = np.concatenate([features, external_features])
    n = len(features)
    fold = [(np.arange(n), np.arange(n, len(everything)))]
    probabilities = cross_validate(config, head, initial, everything,
                                   np.concatenate([onehot, external_set.onehot]), fold,
                                   f"{name} head on every image")[n:]
    true_classes = external_set.onehot.argmax(axis=1)
    result = probe(true_classes, probabilities, class_names, config.seed)
    result["by_source"] = by_source(external_set.sources, true_classes, probabilities,
                                    class_names)
    accepted = np.array([outcome != REJECTED for outcome in outcomes])
    result["accepted_by_input_check"] = (
        probe(true_classes[accepted], probabilities[accepted], class_names, config.seed)
        if len(set(true_classes[accepted].tolist())) == len(class_names) else None)
    result["probabilities"] = probabilities
    return result


def external_report(config, external_set, probes, class_names):
    """The audit's external test (`audit.json`'s `external`): what every external report says
    first (`ExternalSet.facts`), each variant's probe and its AUC's drop, and the input
    check's counts."""
    return {"folder": config.external_folder,
            **external_set.facts(config.dataset, class_names),
            "probe": probes.on_external, "input_check": probes.screened,
            "auc_drop": {name: probes.internal[name]["auc"]["value"]
                         - probes.on_external[name]["auc"]["value"] for name in VARIANTS}}


def audit_report(config, folds, labels, probes, judged, properties, copies, lungs,
                 external_part=None):
    """Everything the audit found, and what is needed to repeat it (`audit.json`)."""
    class_names = folds.class_names
    top, bottom, left, right = lung_box().pixels()
    return {
        **({"external": external_part} if external_part else {}),
        "dataset": config.dataset, "class_names": class_names,
        **({"positive_class": class_names[0]} if len(class_names) == 2 else {}),
        "counts": counts_per_class(folds.onehot, class_names),
        "folds": {"k": config.folds, "grouped_by_patient": folds.grouped},
        "lungs": lungs.about,
        "lung_box": {"fractions_left_top_right_bottom": list(lung_box().box),
                     "pixels_of_224": [left, top, right, bottom]},
        "probe": probes.internal, "shortcut": judged.shortcut, "verdict": judged.text,
        "shortcut_rule": f"lungs_hidden AUC 95% CI above 0.5 and AUC >= {SHORTCUT_AUC}",
        "confounds": properties.confounds,
        "confound_rule": f"a property's AUC alone >= {CONFOUND_AUC}",
        "properties_per_class": properties.per_class,
        "duplicates": copies, "near_duplicate_rule": (
            f"perceptual hashes at most {NEAR_DUPLICATE_BITS} bits of 64 apart and 64x64 grey "
            f"versions correlating at {NEAR_DUPLICATE_CORRELATION} or more"),
        **run_facts(config),
    }


@cli
def main(argv=None) -> int:
    config = parse_args(argv)
    # every path checked before minutes of work; a second audit writing the same files stops
    # here; the outputs replace the earlier ones only when both are written
    with commit_outputs(*check_paths(config.input_folders(), config.outputs(),
                                     config.cache_folder)) as commit:
        # seed everything, then load VGG16 first: a wrong --weights fails in seconds
        base_model = load_vgg16(config.weights, config.seed, config.precision)
        print("[INFO] loading images...")
        images, paths, labels = load_dataset(config.dataset)
        with contextlib.ExitStack() as stack:
            stack.callback(images.close)
            folds = classes_and_folds(config, labels, paths)
            external_set = None
            if config.external_folder:
                check_classes(config.external_folder, folds.class_names)
                external_set = stack.enter_context(contextlib.closing(load_external(
                    config.external_folder, folds.class_names,
                    {images.digest(p): p for p in paths})))
            # where the lungs are: the masks that ship with the images, or the fixed box
            lungs = find_lungs(config.dataset, images, paths, external_set)
            stack.callback(lungs.close)
            # 1. the probe: each variant's heads, cross-validated (and tested externally)
            probes = probe_variants(config, base_model, images, paths, folds, lungs,
                                    external_set)
            # 2. confounds and 3. duplicates
            measured = measure(images, paths)
            properties = describe_properties(measured.rows, labels, folds.class_names,
                                             config.seed)
            copies = find_duplicates(images, paths, labels, measured.hashes)
            examples = [(name, images.image(path), lungs.store.image(lungs.masks[path])
                         if lungs.masks else None)
                        for name in folds.class_names
                        for path in [paths[list(labels).index(name)]]]

        judged = verdict(probes.internal["lungs_hidden"])
        print_probes(probes.internal, judged.text, folds.about, folds.class_names)
        external_part = None
        if external_set:
            print_external(probes.internal, probes.on_external, probes.screened,
                           config.external_folder,
                           class_counts(external_set.onehot, folds.class_names),
                           folds.class_names)
            external_part = external_report(config, external_set, probes, folds.class_names)
        print_confounds_and_duplicates(config.dataset, properties.confounds, copies,
                                       folds.class_names)
        report = audit_report(config, folds, labels, probes, judged, properties, copies,
                              lungs, external_part)
        with commit.writing():
            write_json(commit.temporary(config.report), report)
            save_figure(plot_audit(probes.internal, properties.confounds, measured.rows, labels,
                                   folds.class_names, examples, probes.on_external),
                        commit.temporary(config.plot))
    print(f"[INFO] wrote {shown(config.report)} (report), {shown(config.plot)} (plot)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
