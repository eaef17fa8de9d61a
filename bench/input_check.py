"""Measure the input check per kind of input, and what it costs predict (BENCHMARKS.md).

Usage (from the repository's root, with a model trained on the shipped dataset with the ImageNet
weights, as the README's training run):
    python train_covid19.py --dataset dataset \
        --weights vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5
    python bench/input_check.py --model covid19.h5 --shared SHARED

SHARED is the folder that holds the measurement data: `data/cohen-2020-06-other-views/` (Cohen's
lateral films and CT slices, not redistributable), `data/cohen-2020-06-ccby/` and
`data/kaggle-chest-xray-224/`; a kind whose folder is missing is left out, and said.

Runs predict_covid19.py's own `main` once over every probe image (`probe_sets.py`: generated
flat, noise, gradient and page images, photographs that pip packages ship, pydicom's CT and MR
slices, Cohen's lateral films and CT slices, and frontal films of external/, Cohen, Kaggle and
NIH), reads its CSV and prints, per kind, how many images the check called ok, unlike_training
and rejected, against the targets of issue 35. Then times predict on 100 films with the model
as it is and with the same model saved without its check, alternating, and prints the ratio.
"""

import argparse
import contextlib
import csv
import io
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from probe_sets import probe_sets  # noqa: E402

import predict_covid19  # noqa: E402

# Each kind's target: (what is counted, the bound); "rejected" at least, "flagged or rejected"
# at least, "rejected" at most, "flagged" (unlike or rejected) at most.
REJECT = ("rejected", ">=", 0.95)
TARGETS = {
    "flat": REJECT, "noise": REJECT, "gradients": REJECT, "pages": REJECT,
    "photographs": REJECT, "CT and MR (pydicom)": REJECT, "CT slices (Cohen)": REJECT,
    "lateral films (Cohen)": ("flagged or rejected", ">=", 0.80),
    "Kaggle normal": ("flagged or rejected", "<=", 0.15),
    "Kaggle pneumonia": ("flagged or rejected", "<=", 0.15),
}
FRONTAL_TARGET = ("rejected", "<=", 0.05)


def quiet_main(argv):
    """predict_covid19.main with its lines kept from the terminal; returns its exit code."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return predict_covid19.main(argv)


def outcomes_by_kind(model, sets, folder):
    """{kind: [outcome of each image read]} from one predict run over every probe image."""
    kind_of = {os.path.abspath(path): kind for kind, paths in sets.items() for path in paths}
    table = os.path.join(folder, "probes.csv")
    code = quiet_main(["--model", model, "--csv", table, "--batch-size", "16",
                       *kind_of])
    if code != 0:
        sys.exit(f"predict_covid19.py failed with exit code {code}")
    found = {kind: [] for kind in sets}
    with open(table, newline="") as f:
        for row in csv.DictReader(f):
            found[kind_of[os.path.abspath(row["file"])]].append(row["input_check"])
    return found


def verdict(kind, outcomes):
    what, sense, bound = TARGETS.get(kind, FRONTAL_TARGET)
    rejected = outcomes.count("rejected") / len(outcomes)
    flagged = rejected + outcomes.count("unlike_training") / len(outcomes)
    value = rejected if what == "rejected" else flagged
    met = value >= bound if sense == ">=" else value <= bound
    return f"{what} {sense} {bound:.0%}", "yes" if met else "**no**"


def print_table(found):
    print("| kind of input | images | ok | unlike_training | rejected | target | met |")
    print("|---|---|---|---|---|---|---|")
    for kind, outcomes in found.items():
        if not outcomes:
            continue
        n = len(outcomes)
        cells = [f"{outcomes.count(o)} ({outcomes.count(o) / n:.0%})"
                 for o in ("ok", "unlike_training", "rejected")]
        target, met = verdict(kind, outcomes)
        print(f"| {kind} | {n} | {' | '.join(cells)} | {target} | {met} |")


def time_cost(model, films, folder, rounds):
    """Seconds of predict on `films` with the model as it is and saved without its check,
    alternating, `rounds` each; the first run of each is a warm-up, left out."""
    from covid19xray.model_file import load_classifier, save_model

    plain = os.path.join(folder, "unchecked.h5")
    network, class_names = load_classifier(model)
    save_model(network, plain, class_names)  # the same network, no input check
    times = {"with the check": [], "without": []}
    for round_ in range(rounds + 1):
        for label, path in (("with the check", model), ("without", plain)):
            start = time.perf_counter()
            quiet_main(["--model", path, "--batch-size", "16", *films])
            if round_:
                times[label].append(time.perf_counter() - start)
    return times


def examples(sets):
    """The inputs of issue 35's table: (what, file)."""
    by_name = {os.path.basename(path): path for paths in sets.values() for path in paths}
    chosen = [("a flat grey 512x512 PNG", by_name["flat_00.png"]),
              ("uniform noise", by_name["noise_01.png"]),
              ("a rendered page of text", by_name["page_01.png"]),
              ("pydicom's `CT_small.dcm` (a CT slice)", by_name["CT_small.dcm"]),
              ("pydicom's `MR_small.dcm` (an MR slice)", by_name["MR_small.dcm"]),
              ("a portrait photograph (matplotlib's `grace_hopper.jpg`)",
               by_name["grace_hopper.jpg"])]
    laterals = sets.get("lateral films (Cohen)", [])[:6]
    return chosen, laterals


def print_examples(model, sets, folder):
    """Issue 35's table: what predict answered before the check (the model's class, as
    --classify-rejected still gives it) and what it answers now."""
    chosen, laterals = examples(sets)
    table = os.path.join(folder, "examples.csv")
    files = [path for _, path in chosen] + laterals
    quiet_main(["--model", model, "--csv", table, "--classify-rejected", *files])
    with open(table, newline="") as f:
        rows = {os.path.abspath(row["file"]): row for row in csv.DictReader(f)}

    def before(row):
        return f"{row['predicted']} ({row['predicted']} {float(row['p_' + row['predicted']]):.4f})"

    def after(row):
        return f"{row['input_check']} (distance {float(row['input_distance']):.2f})"

    print("| input | predict before the check | with the check |")
    print("|---|---|---|")
    for what, path in chosen:
        row = rows[os.path.abspath(path)]
        print(f"| {what} | {before(row)} | {after(row)} |")
    if laterals:
        found = [rows[os.path.abspath(path)] for path in laterals]
        answers = sorted(float(row["p_covid"]) for row in found)
        outcomes = [row["input_check"] for row in found]
        covid = sum(row["predicted"] == "covid" for row in found)
        print(f"| {len(found)} lateral chest films | covid {covid} of {len(found)} (p covid "
              f"{answers[0]:.2f} to {answers[-1]:.2f}) | "
              + ", ".join(f"{outcomes.count(o)} {o}" for o in ("ok", "unlike_training",
                                                              "rejected") if outcomes.count(o))
              + " |")
    print()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a model train_covid19.py saved")
    ap.add_argument("--shared", required=True,
                    help="the folder holding data/cohen-2020-06-other-views and the other "
                         "measurement data")
    ap.add_argument("--rounds", type=int, default=3, help="timed runs of each (default: 3)")
    args = ap.parse_args(argv)
    repo = os.path.dirname(HERE)
    with tempfile.TemporaryDirectory() as folder:
        sets, missing = probe_sets(args.shared, repo, os.path.join(folder, "generated"))
        for reason in missing:
            print(f"[INFO] {reason}")
        print_examples(args.model, sets, folder)
        found = outcomes_by_kind(args.model, sets, folder)
        print_table(found)
        films = sets["Kaggle pneumonia"][:50] + sets["external/ (nih, normal)"][:50]
        times = time_cost(args.model, films, folder, args.rounds)
    with_check = statistics.median(times["with the check"])
    without = statistics.median(times["without"])
    print(f"\npredict on {len(films)} films, median of {args.rounds} alternating runs: "
          f"{with_check:.2f} s with the check, {without:.2f} s without: "
          f"{with_check / without:.3f} times")
    print("runs with:", " ".join(f"{t:.2f}" for t in times["with the check"]),
          "| without:", " ".join(f"{t:.2f}" for t in times["without"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
