"""Time our train_covid19.py against the tutorial's algorithm, side by side, on the same data.

Runs bench/reference_train.py (the tutorial as written, Keras 3 changes only), our
train_covid19.py, and our train_covid19.py --cache-features on the same dataset, with the same
epochs and weights, alternating R O C R O C ... so that a slow spell of this shared machine hits
every program alike. Each run is a fresh process; its wall time is measured around it and its
peak resident memory comes from the kernel (os.wait4). Prints every figure, the medians and the
ratios to the reference's median.

`--memory` instead measures peak memory against dataset size: it writes datasets of 200 and
2,000 images (resized copies of --dataset's images, in a temporary folder, deleted afterwards)
and trains on each for --memory-epochs epochs.

Usage (from the repository root, with requirements.txt installed):
    python bench/benchmark.py --dataset ../shared/data/tutorial-dataset --epochs 25 --pairs 3 \
        --weights none
    python bench/benchmark.py --dataset ../shared/data/tutorial-dataset --memory --weights none
"""

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import cv2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from covid19_common import list_images  # noqa: E402  (after the path is set)

PROGRAMS = {
    "reference": [os.path.join(ROOT, "bench", "reference_train.py")],
    "ours": [os.path.join(ROOT, "train_covid19.py")],
    "ours --cache-features": [os.path.join(ROOT, "train_covid19.py"), "--cache-features"],
}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True, help="dataset folder (one folder per class)")
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--pairs", type=int, default=3, help="runs of each program (default: 3)")
    ap.add_argument("--weights", default="none", help="passed to every program (default: none)")
    ap.add_argument("--programs", nargs="+", default=list(PROGRAMS), choices=list(PROGRAMS))
    ap.add_argument("--memory", action="store_true",
                    help="measure peak memory on 200 and 2,000 images instead of timing")
    ap.add_argument("--memory-epochs", type=int, default=1)
    ap.add_argument("--sizes", type=int, nargs="+", default=[200, 2000])
    return ap.parse_args(argv)


def run(command, workdir):
    """Run `command` in `workdir`; return (wall seconds, peak RSS in MiB, last stdout lines)."""
    log = os.path.join(workdir, "stdout.txt")
    with open(log, "w") as out:
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=workdir, stdout=out,
                                   stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    with open(log) as f:
        lines = f.read().splitlines()
    if code != 0:
        raise SystemExit(f"{' '.join(command)} exited {code}:\n" + "\n".join(lines[-20:]))
    return seconds, usage.ru_maxrss / 1024, lines  # ru_maxrss is in KiB on Linux


def accuracy_line(lines):
    return next((line for line in lines if line.startswith("acc: ")), "acc: ?")


def time_programs(args):
    times = {name: [] for name in args.programs}
    memory = {name: [] for name in args.programs}
    for pair in range(args.pairs):
        for name in args.programs:  # alternate R O C R O C ...
            with tempfile.TemporaryDirectory() as workdir:
                command = [sys.executable, *PROGRAMS[name], "--dataset",
                           os.path.abspath(args.dataset), "--epochs", str(args.epochs),
                           "--weights", args.weights]
                seconds, rss, lines = run(command, workdir)
            times[name].append(seconds)
            memory[name].append(rss)
            print(f"run {pair + 1} {name}: {seconds:.1f} s, peak RSS {rss:.0f} MiB, "
                  f"{accuracy_line(lines)}", flush=True)

    reference = statistics.median(times["reference"]) if "reference" in times else None
    print("\n| program | runs (s) | median (s) | median / reference | peak RSS (MiB) |")
    print("|---|---|---|---|---|")
    for name in args.programs:
        median = statistics.median(times[name])
        ratio = f"{median / reference:.3f}" if reference else "-"
        print(f"| {name} | {', '.join(f'{t:.1f}' for t in times[name])} | {median:.1f} | "
              f"{ratio} | {max(memory[name]):.0f} |")
    if reference:
        for name in args.programs:
            if name != "reference":
                print(f"speed-up of {name}: {reference / statistics.median(times[name]):.2f}x")


def write_dataset(source, size, folder):
    """`size` JPEGs cycling through `source`'s images, each resized to a width of 400-460 pixels
    (aspect kept) so that no two files are the same; the class folders keep their names."""
    images = list_images(source)
    for i in range(size):
        path = images[i % len(images)]
        image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        width = 400 + (i // len(images)) % 61
        image = cv2.resize(image, (width, round(image.shape[0] * width / image.shape[1])))
        label = os.path.basename(os.path.dirname(path))
        os.makedirs(os.path.join(folder, label), exist_ok=True)
        cv2.imwrite(os.path.join(folder, label, f"{i:05d}.jpg"), image)


def measure_memory(args):
    rows = []
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as data, tempfile.TemporaryDirectory() as workdir:
            write_dataset(args.dataset, size, data)
            for name in args.programs:
                command = [sys.executable, *PROGRAMS[name], "--dataset", data,
                           "--epochs", str(args.memory_epochs), "--weights", args.weights]
                seconds, rss, _ = run(command, workdir)
                rows.append((name, size, rss, seconds))
                print(f"{name} on {size} images: peak RSS {rss:.0f} MiB ({seconds:.0f} s)",
                      flush=True)
    print("\n| program | images | peak RSS (MiB) | wall (s) |")
    print("|---|---|---|---|")
    for name, size, rss, seconds in rows:
        print(f"| {name} | {size} | {rss:.0f} | {seconds:.0f} |")
    for name in args.programs:
        by_size = {size: rss for n, size, rss, _ in rows if n == name}
        if len(by_size) >= 2:
            small, large = min(by_size), max(by_size)
            print(f"{name}: peak RSS on {large} images / on {small} images = "
                  f"{by_size[large] / by_size[small]:.2f}")


def main(argv=None):
    args = parse_args(argv)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}, "
          f"Python {platform.python_version()}", flush=True)
    print(f"command: {' '.join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])}", flush=True)
    if args.memory:
        measure_memory(args)
    else:
        time_programs(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
