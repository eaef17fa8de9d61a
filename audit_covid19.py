"""Audit a dataset for shortcuts: can the tutorial's model tell the classes apart without the lungs?

A model trained on 50 X-rays from two sources can learn the sources instead of the disease
(DeGrave et al., "AI for radiographic COVID-19 detection selects shortcuts over signal", Nature
Machine Intelligence 2021). Ten test images cannot show it. This script asks the data directly,
with every image a test image once:

1. Probe. K-fold cross-validation of the tutorial's head (the same frozen VGG16, head, optimizer
   and epochs as `train_covid19.py --cache-features`) on three versions of every image: `full`;
   `lungs_hidden`, the central box that covers the lung fields of a PA film blacked out; and
   `lungs_only`, everything outside that box blacked out. If the classes are told apart with
   the lungs hidden, the model can pass without looking at the lungs: a shortcut.
2. Confounds: file and image properties (size, grey or colour, bit depth, format, file size,
   brightness) that alone separate the classes.
3. Duplicates: exact and near copies, within and across classes (across: a label error).

Usage:
    python audit_covid19.py --dataset dataset
    python audit_covid19.py --dataset dataset --weights imagenet --folds 5 --report audit.json

Writes `audit.json` and `audit.png`, and prints a table and a verdict. Folds are stratified by
class and, when the dataset has the builders' `manifest.csv`, grouped by patient. Features come
from the same on-disk cache as `train_covid19.py --cache-features`. Two classes; the first in
sorted order (covid) is the positive one.
"""

import contextlib
import os
import sys

import numpy as np
from sklearn.model_selection import StratifiedKFold

from covid19_cache import FeatureCache, default_cache_folder, summarize
from covid19_cli import ArgumentParser, UserError, cli, lazy_import, positive, shown
from covid19_data import load_dataset, training_batches
from covid19_features import (cache_configuration, extract_features, make_feature_extractor,
                              make_head)
from covid19_files import atomic_outputs, check_output_path, claim_outputs, same_or_inside
from covid19_images import IMAGE_SIZE
from covid19_manifest import MANIFEST, patient_folds, patients_of
from covid19_model import (BS, EPOCHS, INIT_LR, PRECISIONS, VGG16_NOTOP_FILE, build_model,
                           check_precision, load_vgg16_base, loss_for, make_optimizer)
from covid19_properties import (CATEGORICAL, NEAR_DUPLICATE_BITS, NEAR_DUPLICATE_CORRELATION,
                                NUMERIC, duplicates, image_properties, perceptual_hash,
                                separation)
from covid19_report import (CONFIDENCE, auc_with_interval, classification_metrics, save_figure,
                            versions, write_json)

keras = lazy_import("keras")
tf = lazy_import("tensorflow")

# The box over the lung fields of a PA chest film, as fractions of the image's width and height
# (left, top, right, bottom): on the 224x224 image, pixels 22 to 201 both ways, leaving a margin
# of 22 pixels (a tenth) on every side, where the shoulders, the film's edges, labels and
# markers are.
LUNG_BOX = (0.1, 0.1, 0.9, 0.9)
VERSIONS = ("full", "lungs_hidden", "lungs_only")
# The verdict: a shortcut when, with the lungs hidden, the AUC's 95% interval lies above chance
# and the AUC itself is at least this.
SHORTCUT_AUC = 0.8
# A property is a confound when it alone separates the classes at least this well (ROC AUC).
CONFOUND_AUC = 0.8


def parse_args(argv=None):
    ap = ArgumentParser(description="Can the classes of a chest X-ray dataset be told apart "
                                    "without the lungs? Cross-validated probes, confounds and "
                                    "duplicates. For education only.")
    ap.add_argument("-d", "--dataset", required=True,
                    help="dataset folder: one folder of images per class, two classes")
    ap.add_argument("--weights", default="imagenet",
                    help="VGG16 base weights: imagenet, none (random) or the path of a local "
                         f"{VGG16_NOTOP_FILE} (default: %(default)s)")
    ap.add_argument("--folds", type=positive(int), default=5,
                    help="cross-validation folds (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=42,
                    help="seeds the folds, the heads and the bootstrap (default: %(default)s)")
    ap.add_argument("-r", "--report", default="audit.json",
                    help="output JSON report (default: %(default)s)")
    ap.add_argument("-p", "--plot", default="audit.png",
                    help="output figure, PNG (default: %(default)s)")
    ap.add_argument("--epochs", type=positive(int), default=EPOCHS,
                    help="epochs of each fold's head, as train_covid19.py (default: %(default)s)")
    ap.add_argument("--batch-size", type=positive(int), default=BS,
                    help="images per step (default: %(default)s)")
    ap.add_argument("--precision", choices=PRECISIONS, default="float32",
                    help="what the frozen VGG16 computes in (default: %(default)s)")
    ap.add_argument("--cache-dir", default=default_cache_folder(),
                    help="feature cache, shared with train_covid19.py --cache-features; delete "
                         "it to clear it (default: %(default)s)")
    args = ap.parse_args(argv)
    if args.folds < 2:
        ap.error(f"--folds must be 2 or more, got {args.folds}")
    return args


def check_outputs(args):
    """Fail before any work if an output cannot be written or would land in the dataset."""
    for path, flag, suffix in [(args.report, "--report", ".json"), (args.plot, "--plot", ".png")]:
        check_output_path(path, flag, suffix=suffix)
        if os.path.isdir(args.dataset) and same_or_inside(path, args.dataset):
            raise UserError(f"{flag} {path!r} is inside --dataset {args.dataset!r}; write "
                            "outputs elsewhere, source data is never modified")
    if os.path.abspath(args.report) == os.path.abspath(args.plot):
        raise UserError("--report and --plot must be two different files")
    return [args.report, args.plot]


# ---------------------------------------------------------------------------------------------
# The probe
# ---------------------------------------------------------------------------------------------


def box_mask():
    """1 inside LUNG_BOX and 0 outside, on the 224x224 image, as uint8 (224, 224, 1)."""
    height, width = IMAGE_SIZE
    left, top, right, bottom = LUNG_BOX
    mask = np.zeros((height, width, 1), np.uint8)
    mask[round(top * height):round(bottom * height), round(left * width):round(right * width)] = 1
    return mask


def version_of(name):
    """What a version does to a batch of uint8 images before it is scaled, or None (full)."""
    inside = tf.constant(box_mask())
    return {"full": None,
            "lungs_hidden": lambda images: images * (1 - inside),
            "lungs_only": lambda images: images * inside}[name]


def make_folds(args, classes, patients, class_names):
    """K folds stratified by class, grouped by patient when the dataset has a manifest:
    [(train indices, test indices)], every image in exactly one test fold."""
    if patients is not None:
        return patient_folds(classes, patients, args.folds, args.seed, class_names)
    smallest = np.bincount(classes).min()
    if smallest < args.folds:
        raise UserError(f"--folds {args.folds} needs at least {args.folds} images of each class; "
                        f"the smallest class has {smallest}")
    folds = StratifiedKFold(n_splits=args.folds, shuffle=True, random_state=args.seed)
    return list(folds.split(classes, classes))


def cross_validate(args, head, features, onehot, folds):
    """Out-of-fold probabilities: for each fold, a fresh head trained on the other folds'
    features as train_covid19.py --cache-features trains it, then applied to the fold."""
    initial = head.get_weights()
    head.compile(loss=loss_for(onehot.shape[1]), optimizer=make_optimizer(INIT_LR, args.epochs),
                 metrics=["accuracy"])
    probabilities = np.zeros(onehot.shape, np.float32)
    for train, test in folds:
        # A fresh head: the same initial weights and a new optimizer state (its step count,
        # which drives the learning-rate decay, included). One compiled step serves all folds.
        head.set_weights(initial)
        for variable in head.optimizer.variables:
            variable.assign(tf.zeros_like(variable))
        steps = max(1, len(train) // args.batch_size)
        head.fit(training_batches(features[train], onehot[train],
                                  min(args.batch_size, len(train)), args.seed),
                 steps_per_epoch=steps, epochs=args.epochs, shuffle=False, verbose=0)
        probabilities[test] = head.predict(features[test], batch_size=args.batch_size, verbose=0)
    return probabilities


def probe(trueIdxs, probabilities, class_names, seed):
    """The cross-validated metrics of one version, in report.json's shape, and its AUC's
    bootstrap interval."""
    metrics = classification_metrics(trueIdxs, probabilities, class_names)
    return {"auc": auc_with_interval(trueIdxs == 0, probabilities[:, 0], seed),
            "accuracy": metrics["accuracy"], "sensitivity": metrics["sensitivity"],
            "specificity": metrics["specificity"],
            "confusion_matrix": metrics["confusion_matrix"]}


def verdict(hidden_auc):
    """`shortcut` and what to say, from the lungs_hidden version's AUC."""
    value, (low, high) = hidden_auc["value"], hidden_auc["ci95"]
    auc = f"AUC {value:.2f}, 95% CI {low:.2f}-{high:.2f}"
    if low > 0.5 and value >= SHORTCUT_AUC:
        return True, (f"shortcut: the classes can be told apart without looking at the lungs "
                      f"(lungs hidden: {auc}). A model trained on this dataset can score well "
                      "by the image source alone.")
    return False, (f"no shortcut found: with the lungs hidden the classes are not told apart "
                   f"well ({auc}; the rule needs an interval above 0.5 and an AUC of at least "
                   f"{SHORTCUT_AUC}). This does not show that a model reads the lungs.")


# ---------------------------------------------------------------------------------------------
# Confounds and duplicates
# ---------------------------------------------------------------------------------------------


def measure(images, paths):
    """Every image's properties and perceptual hash, in one pass over the store."""
    rows, hashes = [], []
    for path in paths:
        image = images.read([images.slot[path]])[0]
        rows.append(image_properties(images.header[path], images.file_size[path], image))
        hashes.append(perceptual_hash(image))
    return rows, hashes


def describe_properties(rows, labels, class_names, seed):
    """Per class, the distributions of the images' properties (`rows`); the confounds: every
    numeric property that alone separates the classes with an AUC of at least CONFOUND_AUC."""
    is_positive = labels == class_names[0]
    per_class, confounds = {}, []
    for name in class_names:
        mine = [row for row, label in zip(rows, labels) if label == name]
        per_class[name] = {prop: summary([row[prop] for row in mine]) for prop in NUMERIC}
        per_class[name].update({prop: counts([row[prop] for row in mine])
                                for prop in CATEGORICAL})
    for prop in NUMERIC:
        values = np.array([row[prop] for row in rows], float)
        auc = separation(is_positive, values, seed)
        if auc["value"] >= CONFOUND_AUC:
            higher = class_names[0] if auc["higher_in_positive"] else class_names[1]
            confounds.append({"property": prop, "auc": {"value": auc["value"],
                                                        "ci95": auc["ci95"]},
                              "higher_in": higher,
                              "per_class": {name: per_class[name][prop] for name in class_names}})
    confounds.sort(key=lambda c: -c["auc"]["value"])
    return per_class, confounds


def summary(values):
    values = np.asarray(values, float)
    return {"min": float(values.min()), "median": float(np.median(values)),
            "max": float(values.max())}


def counts(values):
    return {value: values.count(value) for value in sorted(set(values))}


def find_duplicates(images, paths, labels, hashes):
    """Exact and near copies among the images (covid19_properties.duplicates)."""
    return duplicates(paths, list(labels), [images.digest[path] for path in paths], hashes,
                      lambda path: images.read([images.slot[path]])[0])


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def print_summary(args, probes, shortcut_text, confounds, found, class_names, folds_info):
    print(f"[INFO] {folds_info}")
    print(f"{'version':<13} {'accuracy':<18} {'sensitivity':<18} {'specificity':<18} ROC AUC")
    for name in VERSIONS:
        p = probes[name]
        cells = [f"{p[k]['value']:.2f} ({p[k]['ci95'][0]:.2f}-{p[k]['ci95'][1]:.2f})"
                 for k in ("accuracy", "sensitivity", "specificity", "auc")]
        print(f"{name:<13} {cells[0]:<18} {cells[1]:<18} {cells[2]:<18} {cells[3]}")
    print(f"[RESULT] {shortcut_text}")
    for c in confounds:
        print(f"[RESULT] confound: {c['property'].replace('_', ' ')} alone separates "
              f"{class_names[0]} from {class_names[1]}: AUC {c['auc']['value']:.2f} (higher in "
              f"{c['higher_in']})")
    if not confounds:
        print(f"[RESULT] no file or image property alone separates the classes (AUC >= "
              f"{CONFOUND_AUC})")
    for d in found:
        how = "" if d["kind"] == "exact" else f" (pixels correlate at {d['correlation']:.3f})"
        files = ", ".join(shown(os.path.relpath(f, args.dataset)) for f in d["files"])
        print(f"[RESULT] {'CROSS-CLASS ' if d['cross_class'] else ''}{d['kind']} duplicate{how}: "
              f"{files}")
    if not found:
        print("[RESULT] no exact or near duplicates")


def plot_audit(probes, confounds, rows, labels, class_names, examples):
    """AUC with its interval for the three versions beside chance, one example of each class
    with the box drawn, and the strongest confound's values per class."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    with plt.style.context("ggplot"):
        fig = plt.figure(figsize=(12, 9))
        grid = fig.add_gridspec(2, 2)
        ax = fig.add_subplot(grid[0, 0])
        values = [probes[v]["auc"]["value"] for v in VERSIONS]
        low = [v - probes[n]["auc"]["ci95"][0] for v, n in zip(values, VERSIONS)]
        high = [probes[n]["auc"]["ci95"][1] - v for v, n in zip(values, VERSIONS)]
        ax.bar(VERSIONS, values, yerr=[low, high], capsize=6, color="tab:blue")
        ax.axhline(0.5, linestyle="--", color="gray", label="chance")
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("cross-validated ROC AUC (95% CI)")
        ax.set_title("Can the classes be told apart?")
        ax.legend(loc="lower right")

        ax = fig.add_subplot(grid[0, 1])
        if confounds:  # every image a dot, one column per class
            prop = confounds[0]["property"]
            jitter = np.random.default_rng(0)
            for k, name in enumerate(class_names):
                mine = [row[prop] for row, label in zip(rows, labels) if label == name]
                ax.scatter(k + jitter.uniform(-0.15, 0.15, len(mine)), mine, alpha=0.6, s=18)
            ax.set_xticks(range(len(class_names)), class_names)
            ax.set_xlim(-0.5, len(class_names) - 0.5)
            ax.set_title(f"Strongest confound: {prop.replace('_', ' ')} "
                         f"(AUC {confounds[0]['auc']['value']:.2f})")
            ax.set_ylabel(prop.replace("_", " "))
        else:
            ax.text(0.5, 0.5, "no property alone separates the classes", ha="center")
            ax.set_axis_off()

        height, width = IMAGE_SIZE
        left, top, right, bottom = LUNG_BOX
        for k, (name, image) in enumerate(examples):
            ax = fig.add_subplot(grid[1, k])
            ax.imshow(image)
            ax.add_patch(Rectangle((left * width, top * height), (right - left) * width,
                                   (bottom - top) * height, fill=False, edgecolor="red",
                                   linewidth=2))
            ax.set_title(f"{name}: lungs_hidden blacks out the box, lungs_only the rest",
                         fontsize=9)
            ax.set_axis_off()
        fig.tight_layout()
    return fig


def two_classes(args, labels, paths):
    """The class names (sorted: the first is the positive class), each image's class index, the
    folds, whether they are grouped by patient, and a line saying so; the audit compares
    exactly two classes."""
    class_names = sorted(set(labels))
    if len(class_names) != 2:
        raise UserError(f"the audit compares two classes; --dataset {args.dataset!r} has "
                        f"{len(class_names)} ({', '.join(class_names)})")
    classes = np.array([class_names.index(label) for label in labels])
    patients = patients_of(args.dataset, paths)
    folds = make_folds(args, classes, patients, class_names)
    sizes = ", ".join(f"{name}: {int((labels == name).sum())}" for name in class_names)
    about = (f"{len(paths)} images ({sizes}), {args.folds}-fold cross-validation "
             + (f"grouped by patient ({MANIFEST})" if patients is not None
                else f"by image (no {MANIFEST}: images of one patient may sit in two folds)"))
    return class_names, classes, folds, patients is not None, about


def probe_versions(args, baseModel, images, paths, classes, folds, class_names):
    """The probe of every version: the features of every image (each computed once, or read
    from the cache), then one fresh head per fold."""
    model = build_model(baseModel, 2)
    extract, head = make_feature_extractor(model, args.precision), make_head(model)
    onehot = np.eye(2, dtype="float32")[classes]
    probes, caches = {}, []
    for name in VERSIONS:
        print(f"[INFO] {name}: features of every image, then {args.folds} heads...")
        caches.append(FeatureCache(args.cache_dir, cache_configuration(
            model, extract, args.precision, variant=name)))
        features = extract_features(extract, images, paths, args.batch_size,
                                    prepare=version_of(name), cache=caches[-1])
        probabilities = cross_validate(args, head, features, onehot, folds)
        probes[name] = probe(classes, probabilities, class_names, args.seed)
    print(summarize(caches))
    return probes


def make_report(args, class_names, labels, grouped, probes, verdict_of, confounds, per_class,
                found):
    """Everything the audit found, and what is needed to repeat it (`audit.json`)."""
    shortcut, text = verdict_of
    return {
        "dataset": args.dataset, "class_names": class_names, "positive_class": class_names[0],
        "counts": {name: int((labels == name).sum()) for name in class_names},
        "folds": {"k": args.folds, "grouped_by_patient": grouped},
        "lung_box": {"fractions_left_top_right_bottom": list(LUNG_BOX),
                     "pixels_of_224": [round(f * 224) for f in LUNG_BOX]},
        "probe": probes, "shortcut": shortcut, "verdict": text,
        "shortcut_rule": f"lungs_hidden AUC 95% CI above 0.5 and AUC >= {SHORTCUT_AUC}",
        "confounds": confounds, "confound_rule": f"a property's AUC alone >= {CONFOUND_AUC}",
        "properties_per_class": per_class,
        "duplicates": found, "near_duplicate_rule": (
            f"perceptual hashes at most {NEAR_DUPLICATE_BITS} bits of 64 apart and 64x64 grey "
            f"versions correlating at {NEAR_DUPLICATE_CORRELATION} or more"),
        "confidence_level": CONFIDENCE, "seed": args.seed, "flags": vars(args),
        "versions": versions(),
    }


@cli
def main(argv=None) -> int:
    args = parse_args(argv)
    outputs = check_outputs(args)
    with claim_outputs(*outputs):  # a second audit writing the same files stops here
        keras.utils.set_random_seed(args.seed)
        check_precision(args.precision)
        # the VGG16 base first: a wrong --weights fails in seconds, not after the images
        baseModel = load_vgg16_base(args.weights)
        print("[INFO] loading images...")
        images, paths, labels = load_dataset(args.dataset)
        with contextlib.closing(images):
            class_names, classes, folds, grouped, about = two_classes(args, labels, paths)
            probes = probe_versions(args, baseModel, images, paths, classes, folds, class_names)
            rows, hashes = measure(images, paths)
            per_class, confounds = describe_properties(rows, labels, class_names, args.seed)
            found = find_duplicates(images, paths, labels, hashes)
            examples = [(name, images.read([images.slot[paths[list(labels).index(name)]]])[0])
                        for name in class_names]

        verdict_of = verdict(probes["lungs_hidden"]["auc"])
        print_summary(args, probes, verdict_of[1], confounds, found, class_names, about)
        report = make_report(args, class_names, labels, grouped, probes, verdict_of, confounds,
                             per_class, found)
        try:
            with atomic_outputs(*outputs) as (report_tmp, plot_tmp):
                write_json(report_tmp, report)
                save_figure(plot_audit(probes, confounds, rows, labels, class_names, examples),
                            plot_tmp)
        except OSError as err:
            raise UserError(f"cannot write the outputs ({err.strerror or err}); every earlier "
                            f"{args.report} and {args.plot} was kept") from None
    print(f"[INFO] wrote {shown(args.report)} (report), {shown(args.plot)} (plot)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
