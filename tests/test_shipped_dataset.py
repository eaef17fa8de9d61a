"""The dataset that ships in dataset/: what it holds, its licences, and that the main command
trains on it as written."""

import collections
import csv
import hashlib
import json
import os
import re
import subprocess
import sys

import pytest

from covid19xray.images import list_images, load_xray
from covid19xray.model import cpu_has_native_bfloat16
from helpers import assert_no_tensorflow_log_lines

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATASET = os.path.join(ROOT, "dataset")
EXTERNAL = os.path.join(ROOT, "external")
# licences that allow redistribution and adaptation with attribution at most
OPEN_LICENSE = re.compile(r"(cc by( \d+(\.\d+)*)?|cc0( 1\.0)?|public domain)", re.I)


def shipped_manifest(folder=DATASET):
    with open(os.path.join(folder, "manifest.csv"), newline="", encoding="utf-8") as f:
        return {row["file"]: row for row in csv.DictReader(f)}


def digests(folder):
    found = {}
    for path in list_images(folder):
        with open(path, "rb") as f:
            found[hashlib.sha256(f.read()).hexdigest()] = path
    return found


def test_exactly_25_covid_and_25_normal_images_that_decode():
    images = list_images(DATASET)
    by_class = collections.Counter(os.path.basename(os.path.dirname(p)) for p in images)
    assert by_class == {"covid": 25, "normal": 25}
    for path in images:
        image = load_xray(path)
        assert image.shape == (224, 224, 3), path


def test_every_image_has_an_open_licence_and_a_source_in_the_manifest():
    manifest = shipped_manifest()
    files = [os.path.relpath(p, DATASET).replace(os.sep, "/") for p in list_images(DATASET)]
    assert sorted(manifest) == sorted(files)  # one row per image, none for a missing file
    for file, row in manifest.items():
        assert OPEN_LICENSE.fullmatch(row["license"].strip()), (file, row["license"])
        assert row["url"].startswith("https://"), file
        assert row["class"] == file.split("/")[0]
        assert row["source"] in ("cohen", "kaggle")


def test_no_two_files_are_identical_and_every_covid_image_is_another_patient():
    digests = collections.Counter()
    for path in list_images(DATASET):
        with open(path, "rb") as f:
            digests[hashlib.sha256(f.read()).hexdigest()] += 1
    assert len(digests) == 50 and set(digests.values()) == {1}
    patients = [row["patient_id"] for row in shipped_manifest().values()
                if row["class"] == "covid"]
    assert len(patients) == 25 and len(set(patients)) == 25 and "" not in patients


def test_size_stays_small():
    total = sum(os.path.getsize(os.path.join(base, name))
                for base, _, names in os.walk(DATASET) for name in names)
    assert total <= 15 * 1024 * 1024


@pytest.mark.slow(seconds=25)
def test_the_main_command_trains_on_the_shipped_dataset(tmp_path):
    # The README's command, from the repository root, with random weights, one epoch and the
    # outputs sent to a temporary folder instead of the checkout. Where the CPU computes
    # bfloat16 natively (AMD Zen 4 and 5, Intel Xeons with AMX), the frozen VGG16 runs in it,
    # as --precision bfloat16 offers: the same steps in about half the time of its 90 passes
    # (float32 elsewhere, where bfloat16 would be slower); the in-process tests run float32.
    outputs = {"--model": tmp_path / "covid19.h5", "--plot": tmp_path / "plot.png",
               "--report": tmp_path / "report.json"}
    precision = ["--precision", "bfloat16"] if cpu_has_native_bfloat16() else []
    dataset_before = sorted(os.walk(DATASET))
    result = subprocess.run(
        [sys.executable, "train_covid19.py", "--dataset", "dataset", "--weights", "none",
         "--epochs", "1", *precision, *[str(x) for pair in outputs.items() for x in pair]],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert_no_tensorflow_log_lines(result.stderr)
    out = result.stdout
    assert "[INFO] 50 images, classes ['covid', 'normal']: 40 for training, 10 for testing" in out
    assert "[INFO] input check fitted on 40 training images: " in out
    # Keras prints no "Epoch 1/1" header for a single epoch, only its line of metrics
    assert re.search(r"^5/5 - .* - accuracy: \d\.\d{4} - loss: \d\.\d{4} - val_accuracy: ", out,
                     re.M)
    assert re.search(r"^\s+covid\s+\d\.\d\d\s+\d\.\d\d\s+\d\.\d\d\s+5(\.0)?$", out, re.M)
    assert re.search(r"^acc: \d\.\d{4} \(95% CI \d\.\d\d-\d\.\d\d\)$", out, re.M)
    assert out.strip().splitlines()[-2:] == [
        f"[INFO] wrote {outputs['--model']} (model), {outputs['--plot']}, "
        f"{tmp_path / 'roc.png'} and {tmp_path / 'calibration.png'} (plots), "
        f"{outputs['--report']} (report)",
        "[INFO] does it read the lungs or the image source? python audit_covid19.py "
        "--dataset dataset"]
    for name in ["plot.png", "roc.png", "calibration.png"]:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["counts"] == {"train": {"covid": 20, "normal": 20},
                                "test": {"covid": 5, "normal": 5}}
    # no temporary file is left beside the outputs, and nothing was added to the dataset
    assert sorted(os.listdir(tmp_path)) == ["calibration.png", "covid19.h5", "plot.png",
                                            "report.json", "roc.png"]
    assert sorted(os.walk(DATASET)) == dataset_before


# ---------------------------------------------------------------------------------------------
# external/: the external test set, shipped with its images: 9 COVID-19 and 3 "No Finding" films
# of Cohen's collection, and 98 adult "No Finding" films of NIH ChestX-ray14
# ---------------------------------------------------------------------------------------------

NIH_URL = "https://nihcc.app.box.com/v/ChestXray-NIHCC"


def test_the_external_manifest_is_licence_clean_attributed_and_pinned():
    manifest = shipped_manifest(EXTERNAL)
    assert collections.Counter((row["class"], row["source"]) for row in manifest.values()) == {
        ("covid", "cohen"): 9, ("normal", "cohen"): 3, ("normal", "nih"): 98}
    for file, row in manifest.items():
        if row["source"] == "cohen":
            assert OPEN_LICENSE.fullmatch(row["license"].strip()), (file, row["license"])
            assert row["url"].startswith("https://"), file
        else:  # NIH: unrestricted use, with the attribution external/README.md gives
            assert row["license"] == "NIH: unrestricted use, with attribution", file
            assert row["url"] == NIH_URL and 18 <= int(row["age"]) <= 77, file
        assert row["class"] == file.split("/")[0] and row["view"] in ("PA", "AP"), file
        assert row["excluded_patients_of"] == "dataset/manifest.csv"
        assert re.fullmatch(r"[0-9a-f]{64}", row["sha256"]), file
    assert len({row["sha256"] for row in manifest.values()}) == 110  # no two files identical


def test_the_external_set_is_attributed_as_nih_asks():
    with open(os.path.join(EXTERNAL, "README.md"), encoding="utf-8") as f:
        text = " ".join(f.read().split())
    for phrase in [NIH_URL, "NIH Clinical Center", "Wang X, Peng Y, Lu L, Lu Z, Bagheri M, "
                   "Summers RM. ChestX-ray8", "CVPR 2017", '"No Finding" is not "normal"']:
        assert phrase in text, phrase


def test_the_external_set_shares_no_file_and_no_patient_with_the_dataset():
    external = {row["sha256"] for row in shipped_manifest(EXTERNAL).values()}
    assert not external & set(digests(DATASET))
    patients = {(row["source"], row["patient_id"]) for row in shipped_manifest().values()}
    external_patients = {(row["source"], row["patient_id"])
                         for row in shipped_manifest(EXTERNAL).values()}
    assert len(external_patients) == 8 + 98 and "" not in {p for _, p in external_patients}
    assert not patients & external_patients


def test_the_shipped_external_set_is_exactly_its_manifest():
    built = {os.path.relpath(path, EXTERNAL).replace(os.sep, "/"): digest
             for digest, path in digests(EXTERNAL).items()}
    assert built == {file: row["sha256"] for file, row in shipped_manifest(EXTERNAL).items()}
    assert len(built) == 110
    for path in list_images(EXTERNAL):
        assert load_xray(path).shape == (224, 224, 3), path


@pytest.mark.slow
def test_one_command_runs_the_external_test_on_a_fresh_clone(tmp_path):
    """`train_covid19.py --dataset dataset --external external` as a fresh clone runs it (a
    narrow random VGG16 in-process, one epoch without augmentation: the report, not the
    accuracy, is the point), split by source."""
    import train_covid19
    from helpers import run_main

    outputs = {flag: str(tmp_path / name) for flag, name in [
        ("--model", "m.h5"), ("--plot", "plot.png"), ("--report", "report.json")]}
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        code, out, err = run_main(train_covid19.main, [
            "--dataset", "dataset", "--external", "external", "--weights", "none",
            "--epochs", "1", "--cache-features", "--no-cache",
            *[item for pair in outputs.items() for item in pair]])
    finally:
        os.chdir(cwd)
    assert code == 0, err
    assert "[INFO] external test: external" in out
    assert "[INFO] 110 external images (covid: 9, normal: 101)" in out
    metric = r"[01]\.\d{4} \(95% CI [01]\.\d\d-[01]\.\d\d\)"
    assert re.search(rf"^by source \(external/manifest.csv\):\n"
                     rf"  nih \(normal 98\): specificity: {metric}\n"
                     rf"  cohen \(covid 9, normal 3\): sensitivity: {metric}, specificity: "
                     rf"{metric}$", out, re.M), out
    external = json.loads((tmp_path / "report.json").read_text())["external"]["external"]
    assert external["counts"] == {"covid": 9, "normal": 101}
    assert {source: result["counts"] for source, result in external["by_source"].items()} == {
        "nih": {"covid": 0, "normal": 98}, "cohen": {"covid": 9, "normal": 3}}
    assert external["by_source"]["nih"]["specificity"]["trials"] == 98
    assert external["patients_shared_with_dataset"] == []
