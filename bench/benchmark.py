"""Time our train_covid19.py against the tutorial's algorithm, side by side, on the same data.

Runs, in turn and `--pairs` times over (so that a slow spell of a shared machine hits every
program alike): bench/reference_train.py (the tutorial as written, Keras 3 changes only); our
train_covid19.py's default command (float32, augmented: the tutorial's results) twice on one
fresh feature cache, first (every rotation of every training image through VGG16, stored) then
warm (the same command again: every feature read back); `--precision bfloat16`; and
`--cache-features` (no augmentation) twice on another fresh cache, cold then warm. Each run is a
fresh process with the same dataset, epochs and weights; wall time is measured around it, peak
memory (RSS) comes from the kernel (os.wait4). It prints every run, the medians, their ratios to
the reference's median, and each program's floor: the time its VGG16 forward passes alone take,
from the cost of one forward pass measured in the same session (`--floor`).

`--memory` instead measures peak memory against dataset size: it writes datasets of 200 and
2,000 images (resized copies of --dataset's images, in a temporary folder, deleted afterwards)
and trains on each for --memory-epochs epochs.

Usage (from the repository root, with requirements.txt installed; `-m` finds the package):
    python -m bench.benchmark --epochs 25 --pairs 2 --weights none
    python -m bench.benchmark --dataset path/to/other/dataset --epochs 25 --pairs 2
    python -m bench.benchmark --memory --weights none
"""

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

import cv2

from covid19xray.config import EPOCHS
from covid19xray.images import list_images

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TRAIN = os.path.join(ROOT, "train_covid19.py")
# {name: (command, the feature cache it uses: one fresh folder per name and pair, shared by
# a program's cold and warm runs)}
PROGRAMS = {
    "reference": ([os.path.join(ROOT, "bench", "reference_train.py")], None),
    "ours": ([TRAIN], "default"),
    "ours warm": ([TRAIN], "default"),
    "ours bfloat16": ([TRAIN, "--precision", "bfloat16"], "bfloat16"),
    "ours --cache-features cold": ([TRAIN, "--cache-features"], "cache-features"),
    "ours --cache-features warm": ([TRAIN, "--cache-features"], "cache-features"),
}

# Times one forward pass of the full VGG16 (what the reference computes) and of our cropped
# extractor in float32 and bfloat16, per image, in batches of 8, after a warm-up: the medians
# of 5 rounds over the dataset's first 16 images.
FLOOR_PROBE = r"""
import sys, time, statistics
import numpy as np, keras
from covid19xray.images import list_images, load_xray, scale_pixels
from covid19xray.frozen import make_feature_extractor
from covid19xray.model import build_model, compiled, load_vgg16_base
images = np.asarray(scale_pixels(np.stack([load_xray(p) for p in list_images(sys.argv[2])[:16]])))
model = build_model(load_vgg16_base("none"))
full = keras.Model(model.input, model.get_layer("flatten").output)
runs = {"full VGG16": compiled(full),  # as predict runs it: the fastest pass
        "ours float32": make_feature_extractor(model, "float32")[0],
        "ours bfloat16": make_feature_extractor(model, "bfloat16")[0]}
for name, run in runs.items():
    for batch in (images[:8], images[8:]):
        np.asarray(run(batch))  # warm-up: tracing, oneDNN's first calls
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        for batch in (images[:8], images[8:]):
            np.asarray(run(batch))
        rounds.append((time.perf_counter() - start) / len(images))
    print("cost:", name, statistics.median(rounds))
"""


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default=os.path.join(ROOT, "dataset"),
                    help="dataset folder, one folder per class (default: the shipped dataset/)")
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    ap.add_argument("--pairs", type=int, default=2, help="runs of each program (default: 2)")
    ap.add_argument("--weights", default="none", help="passed to every program (default: none)")
    ap.add_argument("--programs", nargs="+", default=list(PROGRAMS), choices=list(PROGRAMS))
    ap.add_argument("--memory", action="store_true",
                    help="measure peak memory on 200 and 2,000 images instead of timing")
    ap.add_argument("--memory-epochs", type=int, default=1)
    ap.add_argument("--sizes", type=int, nargs="+", default=[200, 2000])
    return ap.parse_args(argv)


def cpu_model_and_flags():
    """The CPU's model name and the SIMD features that decide VGG16's speed on it."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return "unknown", "unknown"
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown")
    flags = set(info.split())
    wanted = ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile"]
    return model, ", ".join(f"{flag} {'yes' if flag in flags else 'no'}" for flag in wanted)


def run(command, workdir):
    """Run `command` in `workdir`; return (wall seconds, peak RSS in MiB, stdout lines)."""
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


def comparable(lines):
    """A run's stdout without what differs between identical runs: Keras's step times, the
    feature cache's counts, the VGG16 work still to do and the output paths."""
    return [re.sub(r" - \d+m?s(/step)?", "", line) for line in lines
            if not line.startswith(("[INFO] feature cache", "[INFO] VGG16 work",
                                    "[INFO] wrote"))]


def accuracy_line(lines):
    return next((line for line in lines if line.startswith("acc: ")), "acc: ?")


def measure_floor(dataset):
    """{program: seconds a forward pass of one image costs}, measured now, in a fresh process."""
    # run from the root, where `-c` finds the package
    result = subprocess.run([sys.executable, "-c", FLOOR_PROBE, ROOT, os.path.abspath(dataset)],
                            capture_output=True, text=True, check=True, cwd=ROOT)
    costs = {}
    # only the probe's own lines: loading VGG16 says so on stdout too
    for line in result.stdout.splitlines():
        if not line.startswith("cost: "):
            continue
        name, seconds = line.removeprefix("cost: ").rsplit(" ", 1)
        costs[name] = float(seconds)
        print(f"forward pass, {name}: {1000 * float(seconds):.1f} ms an image", flush=True)
    return costs


def floors(costs, images, epochs):
    """Each program's floor: its forward passes times their measured cost. The reference passes
    every image through the full VGG16 every epoch (training and validation); ours passes the
    training images through the cropped extractor every epoch and the test images once, and
    reads them all back when warm; --cache-features passes every image once, and reads them
    all back when warm."""
    train, test = images - round(0.2 * images), round(0.2 * images)
    return {"reference": costs["full VGG16"] * images * epochs,
            "ours": costs["ours float32"] * (train * epochs + test),
            "ours warm": 0.0,
            "ours bfloat16": costs["ours bfloat16"] * (train * epochs + test),
            "ours --cache-features cold": costs["ours float32"] * images,
            "ours --cache-features warm": 0.0}


def time_programs(args):
    dataset = os.path.abspath(args.dataset)
    costs = measure_floor(dataset)
    floor = floors(costs, len(list_images(dataset)), args.epochs)
    times = {name: [] for name in args.programs}
    memory = {name: [] for name in args.programs}
    outputs = {name: [] for name in args.programs}
    for pair in range(args.pairs):
        with tempfile.TemporaryDirectory() as caches:  # fresh caches for every pair
            for name in args.programs:
                program, cache = PROGRAMS[name]
                with tempfile.TemporaryDirectory() as workdir:
                    command = [sys.executable, *program, "--dataset", dataset,
                               "--epochs", str(args.epochs), "--weights", args.weights]
                    if cache is not None:
                        command += ["--cache-dir", os.path.join(caches, cache)]
                    seconds, rss, lines = run(command, workdir)
                times[name].append(seconds)
                memory[name].append(rss)
                outputs[name].append(comparable(lines))
                print(f"run {pair + 1} {name}: {seconds:.1f} s, peak RSS {rss:.0f} MiB, "
                      f"{accuracy_line(lines)}", flush=True)

    reference = statistics.median(times["reference"]) if "reference" in times else None
    print("\n| program | runs (s) | median (s) | median / reference | floor (s) | "
          "median / floor | peak RSS (MiB) |")
    print("|---|---|---|---|---|---|---|")
    for name in args.programs:
        median = statistics.median(times[name])
        ratio = f"{median / reference:.3f}" if reference else "-"
        to_floor = f"{median / floor[name]:.2f}" if floor[name] else "-"
        print(f"| {name} | {', '.join(f'{t:.1f}' for t in times[name])} | {median:.1f} | "
              f"{ratio} | {floor[name]:.1f} | {to_floor} | {max(memory[name]):.0f} |")
    for first, again in [("ours", "ours warm"),
                         ("ours --cache-features cold", "ours --cache-features warm")]:
        if outputs.get(first) and outputs.get(again):
            same = outputs[first] == outputs[again]
            print(f"{again} printed the same epoch lines and report as {first} (step times "
                  f"aside), in every pair: {'yes' if same else 'NO'}")


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
    programs = [name for name in args.programs if "warm" not in name]
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as data, tempfile.TemporaryDirectory() as workdir:
            write_dataset(args.dataset, size, data)
            for name in programs:
                program, cache = PROGRAMS[name]
                command = [sys.executable, *program, "--dataset", data,
                           "--epochs", str(args.memory_epochs), "--weights", args.weights]
                if cache is not None:
                    command += ["--cache-dir", os.path.join(workdir, f"{cache}-{size}")]
                seconds, rss, _ = run(command, workdir)
                rows.append((name, size, rss, seconds))
                print(f"{name} on {size} images: peak RSS {rss:.0f} MiB ({seconds:.0f} s)",
                      flush=True)
    print("\n| program | images | peak RSS (MiB) | wall (s) |")
    print("|---|---|---|---|")
    for name, size, rss, seconds in rows:
        print(f"| {name} | {size} | {rss:.0f} | {seconds:.0f} |")
    for name in programs:
        by_size = {size: rss for n, size, rss, _ in rows if n == name}
        if len(by_size) >= 2:
            small, large = min(by_size), max(by_size)
            print(f"{name}: peak RSS on {large} images / on {small} images = "
                  f"{by_size[large] / by_size[small]:.2f}")


def main(argv=None):
    args = parse_args(argv)
    model, flags = cpu_model_and_flags()
    print(f"CPU: {model}, {os.cpu_count()} CPUs ({platform.machine()}), Python "
          f"{platform.python_version()}", flush=True)
    print(f"CPU flags: {flags}", flush=True)
    print(f"command: {' '.join(['python -m bench.benchmark', *sys.argv[1:]])}",
          flush=True)
    if args.memory:
        measure_memory(args)
    else:
        time_programs(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
