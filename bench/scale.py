"""Past fifty images: train --cache-features, the default training's cost line, the audit and
predict on about 50, 600 and 6,000 images, against the floor of their VGG16 forward passes.

The datasets are three classes drawn from ../shared (never committed): COVID-19 films from
Cohen's CC BY collection and the tutorial's own, Kaggle's NORMAL and PNEUMONIA films (the 6,000
set holds all 5,856 of Kaggle's), hard-linked into a temporary folder. Each run is a fresh
process on a fresh feature cache (cold: every pass computed), timed around it, its peak memory
(RSS) from the kernel (os.wait4), and the cache's size on disk after it. The floor is the passes
a run makes times the cost of one pass measured at the start of the session
(`benchmark.measure_floor`): the whole network for train --cache-features (one pass an image
gives its features and its description) and predict; for the audit, the whole network for
the images as they are (features and description) and the cropped extractor for its two masked
variants.

The default, augmented training is not run past 50 images: its cost line (`VGG16 work: ...`),
printed before the VGG16 work starts, is recorded instead, and the run stopped there.

Usage (from the repository root, with the ImageNet no-top file; hours at 6,000):
    python -m bench.scale --shared ../shared --weights WEIGHTS --sizes 50 600 6000
"""

import argparse
import csv
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from bench.benchmark import measure_floor
from covid19xray.images import list_images

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", required=True, help="the shared data folder (../shared)")
    ap.add_argument("--weights", required=True, help="VGG16's ImageNet no-top file")
    ap.add_argument("--sizes", type=int, nargs="+", default=[50, 600, 6000])
    ap.add_argument("--steps", nargs="+", default=["train", "cost", "audit", "predict"],
                    choices=["train", "cost", "audit", "predict"])
    ap.add_argument("--work", help="where the datasets and caches go (default: a temporary "
                                   "folder, deleted afterwards)")
    return ap.parse_args(argv)


def sources(shared):
    """{class: every file of it in ../shared}, sorted."""
    data = os.path.join(shared, "data")
    kaggle = os.path.join(data, "kaggle-chest-xray-224", "chest_xray")
    cohen = os.path.join(data, "cohen-2020-06-ccby")
    with open(os.path.join(cohen, "metadata.csv"), newline="", encoding="utf-8") as f:
        covid = {row["filename"] for row in csv.DictReader(f) if "COVID-19" in row["finding"]}
    return {
        "covid": sorted([p for p in list_images(os.path.join(cohen, "images"))
                         if os.path.basename(p) in covid]
                        + list_images(os.path.join(data, "tutorial-dataset", "covid"))),
        "normal": sorted(p for p in list_images(kaggle) if os.sep + "NORMAL" + os.sep in p),
        "pneumonia": sorted(p for p in list_images(kaggle)
                            if os.sep + "PNEUMONIA" + os.sep in p),
    }


def make_dataset(folder, files, size, seed=42):
    """About `size` images in three class folders: every COVID-19 film up to a third, the rest
    Kaggle's two classes in their own proportion (all of them at 6,000). Hard links where the
    filesystem allows, copies elsewhere. Returns the counts per class."""
    rng = random.Random(seed)
    covid = files["covid"][:max(1, min(len(files["covid"]), size // 3))]
    kaggle = size - len(covid)
    total = len(files["normal"]) + len(files["pneumonia"])
    counts = {"covid": len(covid)}
    for name in ("normal", "pneumonia"):
        counts[name] = min(len(files[name]), round(kaggle * len(files[name]) / total))
    for name, n in counts.items():
        chosen = covid if name == "covid" else rng.sample(files[name], n)
        os.makedirs(os.path.join(folder, name))
        for k, path in enumerate(sorted(chosen)):
            target = os.path.join(folder, name, f"{k:05d}{os.path.splitext(path)[1].lower()}")
            try:
                os.link(path, target)
            except OSError:
                shutil.copyfile(path, target)
    return counts


def run(argv, stop_at=None):
    """(seconds, peak RSS in MB, stdout) of one fresh process; with `stop_at`, it is stopped
    (SIGTERM) once a stdout line starts with it."""
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, *argv], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    lines = []
    for line in process.stdout:
        lines.append(line)
        if stop_at and line.startswith(stop_at):
            process.send_signal(signal.SIGTERM)
            break
    process.stdout.close()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if not stop_at and os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{''.join(lines[-20:])}")
    return seconds, usage.ru_maxrss / 1024, "".join(lines)


def disk_mb(folder):
    return sum(os.stat(os.path.join(base, name)).st_blocks * 512
               for base, _, names in os.walk(folder) for name in names) / 1e6


def main(argv=None):
    args = parse_args(argv)
    files = sources(args.shared)
    costs = measure_floor(os.path.join(ROOT, "dataset"))
    ours, full = costs["ours float32"], costs["full VGG16"]
    work = args.work or tempfile.mkdtemp(prefix="scale-")
    rows = []
    try:
        for size in args.sizes:
            done = len(rows)
            dataset = os.path.join(work, f"d{size}")
            if not os.path.isdir(dataset):
                counts = make_dataset(dataset, files, size)
            else:
                counts = {name: len(os.listdir(os.path.join(dataset, name)))
                          for name in sorted(os.listdir(dataset))}
            n = sum(counts.values())
            print(f"== {n} images {counts}", flush=True)
            common = ["--weights", args.weights]
            if "train" in args.steps:
                cache = os.path.join(work, f"c{size}-train")
                seconds, rss, _ = run(["train_covid19.py", "--dataset", dataset,
                                       "--cache-features", "--cache-dir", cache, "--model",
                                       os.path.join(work, f"m{size}.h5"), "--plot",
                                       os.path.join(work, f"p{size}.png"), "--report",
                                       os.path.join(work, f"r{size}.json"), *common])
                floor = n * full  # each image once, its features and description in one pass
                rows.append((n, "train --cache-features", seconds, floor, rss, disk_mb(cache)))
            if "cost" in args.steps:
                cache = os.path.join(work, f"c{size}-cost")
                _, _, out = run(["train_covid19.py", "--dataset", dataset, "--cache-dir", cache,
                                 "--model", os.path.join(work, f"x{size}.h5"), "--plot",
                                 os.path.join(work, f"x{size}.png"), "--report",
                                 os.path.join(work, f"x{size}.json"), *common],
                                stop_at="[INFO] VGG16 work")
                line = next((l for l in out.splitlines() if l.startswith("[INFO] VGG16 work")),
                            "(no cost line)")
                rows.append((n, "default training's cost line", None, None, None, line))
            if "audit" in args.steps:
                cache = os.path.join(work, f"c{size}-audit")
                seconds, rss, _ = run(["audit_covid19.py", "--dataset", dataset, "--cache-dir",
                                       cache, "--report", os.path.join(work, f"a{size}.json"),
                                       "--plot", os.path.join(work, f"a{size}.png"), *common])
                rows.append((n, "audit", seconds, n * (full + 2 * ours), rss, disk_mb(cache)))
            if "predict" in args.steps and os.path.isfile(os.path.join(work, f"m{size}.h5")):
                seconds, rss, _ = run(["predict_covid19.py", "--model",
                                       os.path.join(work, f"m{size}.h5"), dataset, "--csv",
                                       os.path.join(work, f"pred{size}.csv")])
                rows.append((n, "predict", seconds, n * full, rss, None))
            for row in rows[done:]:
                print(describe(row), flush=True)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print("\n| images | run | wall | floor | ratio | peak RSS | cache |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(describe(row, table=True))


def describe(row, table=False):
    n, what, seconds, floor, rss, cache = row
    if seconds is None:
        return f"| {n:,} | {what} | {cache} | | | | |" if table else f"{n} {what}: {cache}"
    cells = [f"{n:,}", what, f"{seconds:.0f} s", f"{floor:.0f} s", f"{seconds / floor:.2f}",
             f"{rss:,.0f} MB", "-" if cache is None else f"{cache:.1f} MB"]
    return "| " + " | ".join(cells) + " |" if table else " ".join(cells)


if __name__ == "__main__":
    main()
