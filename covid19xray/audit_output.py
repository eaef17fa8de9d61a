"""What the audit prints and draws (audit_covid19.py): the probe table, the external probes,
the confounds and duplicates, and `audit.png`."""

import os

import numpy as np

from .cli import shown
from .confounds import CONFOUND_AUC
from .lungs import lung_box
from .manifest import MANIFEST
from .report import describe_by_source, print_counts

# What each variant of an image is: the image as it is, the lung box blacked out, all but it.
VARIANTS = ("full", "lungs_hidden", "lungs_only")


def cell(m):
    """`0.90 (0.60-0.98)`: a value and its interval, in a table."""
    return f"{m['value']:.2f} ({m['ci95'][0]:.2f}-{m['ci95'][1]:.2f})"


def print_probes(probes, shortcut_text, folds_info, class_names):
    """The probe table, one row per variant, and the verdict. With more than two classes, the
    macro AUC, then each class's AUC against the rest."""
    print(f"[INFO] {folds_info}")
    if len(class_names) == 2:
        print(f"{'variant':<13} {'accuracy':<18} {'sensitivity':<18} {'specificity':<18} "
              "ROC AUC")
        for name in VARIANTS:
            cells = [cell(probes[name][k])
                     for k in ("accuracy", "sensitivity", "specificity", "auc")]
            print(f"{name:<13} {cells[0]:<18} {cells[1]:<18} {cells[2]:<18} {cells[3]}")
    else:
        print(f"{'variant':<13} {'accuracy':<18} {'macro AUC':<18} "
              + " ".join(f"{shown(c) + ' vs rest':<18}" for c in class_names).rstrip())
        for name in VARIANTS:
            p = probes[name]
            cells = [cell(p["accuracy"]), cell(p["auc"]),
                     *[cell(p["per_class_auc"][c]) for c in class_names]]
            print(f"{name:<13} " + " ".join(f"{c:<18}" for c in cells).rstrip())
    print(f"[RESULT] {shortcut_text}")


def print_external(probes, external_probes, screened, folder, counts, class_names):
    """Each variant's cross-validated AUC beside its AUC on the external folder, on every image
    and on those the input check accepted, then the check's counts."""
    print(f"[INFO] external test: {shown(folder)} ({counts}); each variant's head trained on "
          "every image of --dataset")
    print(f"{'variant':<13} {'internal AUC (CV)':<20} {'external AUC':<20} {'drop':<7} "
          f"external AUC, the {screened['accepted']} the input check accepted")
    for name in VARIANTS:
        inside, outside = probes[name]["auc"], external_probes[name]["auc"]
        accepted = (external_probes[name]["accepted_by_input_check"] or {}).get("auc")
        cells = [f"{a['value']:.2f} ({a['ci95'][0]:.2f}-{a['ci95'][1]:.2f})" if a else "n/a"
                 for a in (inside, outside, accepted)]
        print(f"{name:<13} {cells[0]:<20} {cells[1]:<20} "
              f"{inside['value'] - outside['value']:<+7.2f} {cells[2]}")
    print_counts(screened, "input check (fitted on every image of --dataset) on the external "
                           "images")
    if external_probes[VARIANTS[0]]["by_source"]:
        print(f"by source ({shown(os.path.join(folder, MANIFEST))}), each variant's "
              "external head:")
        for name in VARIANTS:
            print(f"{name}:")
            print("\n".join(describe_by_source(external_probes[name]["by_source"],
                                               class_names)))


def print_confounds_and_duplicates(dataset, confounds, copies, class_names):
    """One line per confound and per group of copies, or one line saying there are none."""
    for c in confounds:
        print(f"[RESULT] confound: {c['property'].replace('_', ' ')} alone separates "
              f"{shown(c['separates'][0])} from {shown(c['separates'][1])}: AUC "
              f"{c['auc']['value']:.2f} (higher in {shown(c['higher_in'])})")
    if not confounds:
        print(f"[RESULT] no file or image property alone separates the classes (AUC >= "
              f"{CONFOUND_AUC})")
    for d in copies:
        how = "" if d["kind"] == "exact" else f" (pixels correlate at {d['correlation']:.3f})"
        files = ", ".join(shown(os.path.relpath(f, dataset)) for f in d["files"])
        print(f"[RESULT] {'CROSS-CLASS ' if d['cross_class'] else ''}{d['kind']} duplicate{how}: "
              f"{files}")
    if not copies:
        print("[RESULT] no exact or near duplicates")


def plot_audit(probes, confounds, rows, labels, class_names, examples, external_probes=None):
    """AUC with its interval for the three variants beside chance (and beside their external
    AUC), one example of each class with the box drawn, and the strongest confound's values per
    class."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    with plt.style.context("ggplot"):
        fig = plt.figure(figsize=(12, 9))
        # the examples' row holds one image per class; the two plots share the top row
        columns = max(2, len(examples))
        grid = fig.add_gridspec(2, columns)
        ax = fig.add_subplot(grid[0, :columns // 2])
        sets = [("cross-validated", probes, "tab:blue")]
        if external_probes:
            sets.append(("external", external_probes, "tab:orange"))
        width = 0.8 / len(sets)
        for k, (label, results, color) in enumerate(sets):
            values = [results[v]["auc"]["value"] for v in VARIANTS]
            low = [v - results[n]["auc"]["ci95"][0] for v, n in zip(values, VARIANTS)]
            high = [results[n]["auc"]["ci95"][1] - v for v, n in zip(values, VARIANTS)]
            ax.bar(np.arange(len(VARIANTS)) + (k - (len(sets) - 1) / 2) * width, values, width,
                   yerr=[low, high], capsize=6, color=color, label=label)
        ax.set_xticks(range(len(VARIANTS)), VARIANTS)
        ax.axhline(0.5, linestyle="--", color="gray", label="chance")
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("ROC AUC (95% CI)")
        ax.set_title("Can the classes be told apart?")
        ax.legend(loc="lower right")

        ax = fig.add_subplot(grid[0, columns // 2:])
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

        top, bottom, left, right = lung_box().pixels()
        for k, (name, image, mask) in enumerate(examples):
            ax = fig.add_subplot(grid[1, k])
            ax.imshow(image)
            if mask is None:
                ax.add_patch(Rectangle((left, top), right - left, bottom - top, fill=False,
                                       edgecolor="red", linewidth=2))
                what = "the box"
            else:
                ax.contour(mask.max(axis=-1) > 127, levels=[0.5], colors="red")
                what = "its lung mask"
            ax.set_title(f"{name}: lungs_hidden blacks out {what}, lungs_only the rest",
                         fontsize=9)
            ax.set_axis_off()
        fig.tight_layout()
    return fig
