"""Recalibration measured on films it was not fitted on: the README's model, recalibrated on
part of external/ by recalibrate_covid19.py and scored by predict_covid19.py (its CSV) on the
rest, fold by fold, the held-out probabilities pooled.

Folds: stratified by class and grouped by patient (external/manifest.csv), 5 of them: every
film is scored once, by an update fitted on films of other patients. Before: predict_covid19.py
with the model as trained, on every film. It prints the calibration of both (covid19xray.
calibration), and the adult normal films (NIH's) given p(covid) above 0.9.

Usage (from the repository root, with a model from the README's training command):
    python -m bench.recalibration --model covid19.h5 --external external
"""

import argparse
import csv
import os
import subprocess
import sys
import tempfile

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from covid19xray.calibration import calibration, print_calibration
from covid19xray.layout import find_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDS = 5


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--external", default=os.path.join(ROOT, "external"))
    ap.add_argument("--seed", type=int, default=42)
    return ap.parse_args(argv)


def script(*argv):
    result = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{' '.join(argv)} failed:\n{result.stderr[-2000:]}")
    return result.stdout


def predicted(model, folder, csv_path):
    """{file name: p(covid)} from predict_covid19.py's CSV on `folder`."""
    script("predict_covid19.py", "--model", model, folder, "--csv", csv_path,
           "--classify-rejected")
    with open(csv_path, newline="") as f:
        return {os.path.relpath(row["file"], folder): float(row["p_covid"])
                for row in csv.DictReader(f)}


def linked(folder, files, source):
    """A folder of class folders holding links to `files` (paths relative to `source`)."""
    for name in files:
        target = os.path.join(folder, name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.symlink(os.path.abspath(os.path.join(source, name)), target)
    return folder


def main(argv=None):
    args = parse_args(argv)
    layout = find_dataset(args.external, "--external")
    files = [os.path.relpath(path, args.external) for path in layout.paths]
    true = np.array([0 if label == "covid" else 1 for label in layout.labels])
    with open(os.path.join(args.external, "manifest.csv"), newline="") as f:
        rows = {row["file"]: row for row in csv.DictReader(f)}
    patients = [f"{rows[name]['source']}:{rows[name]['patient_id']}" for name in files]
    sources = np.array([rows[name]["source"] for name in files])
    with tempfile.TemporaryDirectory() as work:
        before = predicted(args.model, args.external, os.path.join(work, "before.csv"))
        after = {}
        split = StratifiedGroupKFold(FOLDS, shuffle=True, random_state=args.seed)
        for k, (fit, held) in enumerate(split.split(files, true, patients)):
            fold = os.path.join(work, f"fold{k}")
            fitted = os.path.join(fold, "site.h5")
            os.makedirs(fold)
            out = script("recalibrate_covid19.py", "--model", args.model, "--labelled",
                         linked(os.path.join(fold, "fit"), [files[i] for i in fit],
                                args.external), "--output", fitted)
            print(f"fold {k}: fitted on {len(fit)}, scored on {len(held)}: "
                  f"{out.splitlines()[-1]}", flush=True)
            scored = predicted(fitted, linked(os.path.join(fold, "held"),
                                              [files[i] for i in held], args.external),
                               os.path.join(fold, "held.csv"))
            after.update(scored)
    for name, p in (("before (the model as trained)", before),
                    ("after (recalibrated on other patients' films, pooled)", after)):
        covid = np.array([p[name] for name in files])
        probabilities = np.column_stack([covid, 1 - covid])
        print(f"\n{name}: {len(files)} films")
        print_calibration(calibration(true, probabilities, ["covid", "normal"], seed=0))
        normal = true == 1
        print(f"  adult normal films given p(covid) > 0.9: {int((covid[normal] > 0.9).sum())} "
              f"of {int(normal.sum())} ({int((covid[normal & (sources == 'nih')] > 0.9).sum())}"
              f" of NIH's {int((normal & (sources == 'nih')).sum())}); their mean p(covid) "
              f"{covid[normal].mean():.2f}")


if __name__ == "__main__":
    main()
