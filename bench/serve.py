"""Grad-CAM at the cost of the prediction, and the page's API against predict_covid19.py,
measured side by side in one run.

- predict_covid19.py on 10 and on 30 films, with and without --gradcam: the marginal cost of a
  film is (30 films - 10 films) / 20, start-up and loading cancelled out;
- serve_covid19.py: seconds from start to the printed address, the first single-film request,
  a 10-film and a 30-film request (the same marginal cost, Grad-CAM always on), and the
  server's RSS after 15 and after 150 single-film requests.
The films are the first 30 of external/ (its adult films are 1024x1024 and larger); each pair
of predict runs is repeated `--repeats` times, alternating, and the lowest time kept.

`--compare-with CHECKOUT` times another checkout's predict_covid19.py (an earlier commit, made
with `git worktree add`) in the same alternation.

Usage (from the repository root, with a model from the README's training command):
    python -m bench.serve --model covid19.h5 [--compare-with ../before]
"""

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

import requests

from bench.benchmark import cpu_model_and_flags, measure_floor, run
from covid19xray.images import list_images

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--films", default=os.path.join(ROOT, "external"))
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--compare-with", metavar="CHECKOUT")
    return ap.parse_args(argv)


def predict_seconds(root, model, films, gradcam, workdir):
    command = [sys.executable, os.path.join(root, "predict_covid19.py"), "--model", model,
               *films, "--csv", "p.csv"]
    if gradcam:
        command += ["--gradcam", "gradcam"]
    seconds, rss, _ = run(command, workdir)
    return seconds


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) / 1024


def post(url, films):
    files = [("files", (os.path.basename(path), open(path, "rb").read())) for path in films]
    start = time.perf_counter()
    response = requests.post(url + "api/predict", files=files, timeout=600)
    response.raise_for_status()
    return time.perf_counter() - start


def measure_server(model, films, workdir):
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, "serve_covid19.py"),
                                "--model", model, "--port", "0"], cwd=workdir,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = process.stdout.readline()
    started = time.perf_counter() - start
    url = re.search(r"http://\S+/", line).group(0)
    try:
        first = post(url, films[:1])
        ten = min(post(url, films[:10]) for _ in range(2))
        thirty = min(post(url, films[:30]) for _ in range(2))
        for i in range(150):
            post(url, [films[i % len(films)]])
            if i + 1 == 15:
                after_15 = rss_mib(process.pid)
        after_150 = rss_mib(process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    return {"start": started, "first": first, "ten": ten, "thirty": thirty,
            "rss_15": after_15, "rss_150": after_150}


def main(argv=None):
    args = parse_args(argv)
    model = os.path.abspath(args.model)
    films = list_images(args.films)[:30]
    print(f"CPU: {' / '.join(cpu_model_and_flags())}")
    measure_floor(os.path.join(ROOT, "dataset"))
    with tempfile.TemporaryDirectory() as workdir:
        roots = {"this": ROOT}
        if args.compare_with:
            roots["compared"] = os.path.abspath(args.compare_with)
        times = {}
        for _ in range(args.repeats):
            for code, root in roots.items():
                for gradcam in (False, True):
                    for n in (10, 30):
                        seconds = predict_seconds(root, model, films[:n], gradcam, workdir)
                        key = (code, gradcam, n)
                        times[key] = min(times.get(key, seconds), seconds)
        served = measure_server(model, films, workdir)
    for (code, gradcam, n), seconds in sorted(times.items()):
        print(f"{code}: predict {'--gradcam ' if gradcam else ''}{n} films: {seconds:.2f} s")
    for code in roots:
        plain = (times[code, False, 30] - times[code, False, 10]) / 20
        with_gradcam = (times[code, True, 30] - times[code, True, 10]) / 20
        print(f"{code}: marginal cost of a film: predict {1000 * plain:.0f} ms, predict "
              f"--gradcam {1000 * with_gradcam:.0f} ms ({with_gradcam / plain:.2f}x)")
    plain = (times["this", False, 30] - times["this", False, 10]) / 20
    with_gradcam = (times["this", True, 30] - times["this", True, 10]) / 20
    api = (served["thirty"] - served["ten"]) / 20
    print(f"API: 10 films {served['ten']:.2f} s, 30 films {served['thirty']:.2f} s; marginal "
          f"{1000 * api:.0f} ms a film ({api / with_gradcam:.2f}x predict --gradcam's, "
          f"{api / plain:.2f}x predict's)")
    print(f"server: address printed after {served['start']:.2f} s; first single film "
          f"{served['first']:.2f} s; RSS {served['rss_15']:.0f} MiB after 15 single-film "
          f"requests, {served['rss_150']:.0f} MiB after 150")
    return 0


if __name__ == "__main__":
    sys.exit(main())
