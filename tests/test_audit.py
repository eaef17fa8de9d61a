"""audit_covid19.py on small datasets made at run time, where the right answer is known.

The probe needs features in which a bright patch stands out, and random VGG16 weights with
Keras's default (Glorot) scale shrink an image's contrast about a thousandfold over 13 ReLU
layers: features of 1e-4, which 25 epochs of the head hardly move. So these tests make their own
weights file: VGG16 with He-scaled random kernels (std sqrt(2 / fan-in), zero biases), which
keep the contrast through every layer. On a flat, lightly noisy background a white patch then
moves the pooled features about 25 times more than the noise does, and the cross-validated AUC,
which only needs the head to rank the images, sees it wherever the variant leaves it visible.
"""

import contextlib
import io
import json
import os
import subprocess
import sys

import cv2
import keras
import numpy as np
import pytest

import audit_covid19
from covid19xray import audit_output, confounds, lungs, progress
from covid19xray.auc_interval import BOOTSTRAP_RESAMPLES
from covid19xray.layout import load_dataset
from covid19xray.model import cpu_has_native_bfloat16
from covid19xray.store import ImageStore
from covid19xray.transforms import LungMasks
from helpers import (
    ROOT,
    assert_no_tensorflow_log_lines,
    assert_one_line_error,
    narrow_vgg16,
    progress_counts,
    radiography,
    run_main,
    small_dataset,
    snapshot,
    terminate_here,
    write_image,
)


def write_signal_dataset(root, where, per_class=12, size=112, classes=("covid", "normal"),
                         marked="covid"):
    """Flat grey images with light noise; the `marked` class's carry a white patch `where`: in
    the top-left corner (outside the lung box) or in the middle (inside it)."""
    rng = np.random.default_rng(1)
    patch = {"corner": (slice(0, size // 11), slice(0, size // 11)),
             "middle": (slice(size * 2 // 5, size * 3 // 5), slice(size * 2 // 5, size * 3 // 5))}
    for name in classes:
        os.makedirs(os.path.join(root, name))
        for i in range(per_class):
            image = (100 + rng.integers(-10, 11, (size, size))).astype(np.uint8)
            if name == marked and where:
                image[patch[where]] = 255
            cv2.imwrite(os.path.join(root, name, f"{name}-{i:02d}.png"), image)
    return root


def audit(dataset, tmp_path, weights, *extra):
    report, plot = tmp_path / "audit.json", tmp_path / "audit.png"
    code, out, err = run_main(audit_covid19.main, [
        "--dataset", dataset, "--weights", weights, "--folds", "3", "--report", str(report),
        "--plot", str(plot), "--cache-dir", str(tmp_path / "cache"), *extra])
    assert code == 0, err
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return json.loads(report.read_text()), out, err


def auc(report, variant):
    return report["probe"][variant]["auc"]["value"]


@pytest.mark.slow
def test_a_signal_outside_the_lung_box_is_a_shortcut(tmp_path, monkeypatch):
    # --weights none with a He-initialised VGG16 of a quarter of the filters: its random
    # features keep enough of the image for a known answer (an eighth's do not, for 'full')
    monkeypatch.setattr(keras.applications, "VGG16",
                        lambda **options: narrow_vgg16(options["input_shape"], width=4))
    dataset = write_signal_dataset(str(tmp_path / "corner"), "corner")
    report, out, _ = audit(dataset, tmp_path, "none")
    assert report["shortcut"] is True
    assert auc(report, "full") >= 0.8 and auc(report, "lungs_hidden") >= 0.8
    assert report["probe"]["lungs_hidden"]["auc"]["ci95"][0] > 0.5
    assert auc(report, "lungs_only") < 0.8  # the box itself holds nothing
    assert "[RESULT] shortcut: the classes can be told apart without looking at the lungs" in out
    # the report's shape: each variant with its AUC and report.json's metrics
    for variant in ["full", "lungs_hidden", "lungs_only"]:
        probe = report["probe"][variant]
        assert set(probe["auc"]) == {"value", "ci95"}
        for metric in ["accuracy", "sensitivity", "specificity"]:
            assert set(probe[metric]) == {"value", "ci95", "successes", "trials"}
        assert probe["accuracy"]["trials"] == 24  # every image a test image once
    assert report["lung_box"] == {"fractions_left_top_right_bottom": [0.1, 0.1, 0.9, 0.9],
                                  "pixels_of_224": [22, 22, 202, 202]}
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("variant "))
    assert [line.split()[0] for line in lines[header:header + 4]] == [
        "variant", "full", "lungs_hidden", "lungs_only"]
    hidden = lines[header + 2].split()
    assert hidden[-2] == f"{auc(report, 'lungs_hidden'):.2f}"  # the AUC column is the report's


@pytest.mark.slow
def test_external_probes_stand_beside_the_cross_validated_ones(tmp_path, monkeypatch):
    dataset = write_signal_dataset(str(tmp_path / "d"), "corner", per_class=4, size=32)
    external = write_signal_dataset(str(tmp_path / "e"), None, per_class=3, size=40)
    monkeypatch.setattr(progress, "LOG_INTERVAL", 0)  # a progress line for every update
    report, out, err = audit(dataset, tmp_path, "none", "--folds", "2", "--epochs", "1",
                             "--external", external)
    # every step says how far it is, in a log as on a terminal
    # (8 images in --dataset, 6 external ones, from 0 to all of them)
    # (the images as they are: their features and descriptions from one pass)
    for what, totals in [("decoding", [8, 6]), ("VGG16 features and descriptions", [8, 6]),
                         ("full heads", [2]), ("lungs_hidden heads", [2]),
                         ("lungs_only heads", [2]), ("full head on every image", [1]),
                         ("image properties", [8]), ("AUC bootstrap", [BOOTSTRAP_RESAMPLES])]:
        counts = progress_counts(err, what)
        for total in totals:
            assert (0, total) in counts and (total, total) in counts, (what, counts)
    # one pass of each image as it is: no second pass of the cropped network for its features
    assert progress_counts(err, "VGG16 features") == []
    (tmp_path / "plain").mkdir()
    plain, _, _ = audit(dataset, tmp_path / "plain", "none", "--folds", "2", "--epochs", "1")
    assert plain["probe"] == report["probe"]  # the external test changes no internal number
    found = report["external"]
    assert found["counts"] == {"covid": 3, "normal": 3} and len(found["files"]) == 6
    assert found["refused_identical_to_dataset"] == []
    assert found["patients_shared_with_dataset"] is None  # neither folder has a manifest
    lines = out.splitlines()
    checked = found["input_check"]
    accepted = checked["accepted"]
    assert sum(checked["counts"].values()) == 6 and checked["by_source"] is None
    assert {name: sum(c.values()) for name, c in checked["by_class"].items()} == {
        "covid": 3, "normal": 3}
    header = lines.index(f"{'variant':<13} {'internal AUC (CV)':<20} {'external AUC':<20} "
                         f"{'drop':<7} external AUC, the {accepted} the input check accepted")
    for line, variant in zip(lines[header + 1:header + 4], ["full", "lungs_hidden",
                                                             "lungs_only"]):
        inside = report["probe"][variant]["auc"]["value"]
        outside = found["probe"][variant]["auc"]["value"]
        assert found["probe"][variant]["accuracy"]["trials"] == 6
        assert found["auc_drop"][variant] == pytest.approx(inside - outside)
        cells = line.split()
        assert cells[0] == variant and cells[5] == f"{inside - outside:+.2f}"
        on_accepted = found["probe"][variant]["accepted_by_input_check"]
        if on_accepted is None:  # the check rejected every image of a class
            assert cells[6] == "n/a"
        else:
            assert on_accepted["accuracy"]["trials"] == accepted
            assert cells[6] == f"{on_accepted['auc']['value']:.2f}"
    assert lines[header + 4] == ("input check (fitted on every image of --dataset) on the "
                                 f"external images: {checked['counts']['ok']} ok, "
                                 f"{checked['counts']['unlike_training']} unlike the training "
                                 f"images, {checked['counts']['rejected']} rejected")


@pytest.mark.slow
def test_an_edited_lung_box_recomputes_the_masked_features(tmp_path, monkeypatch):
    """The box is in the feature cache's key: a rerun with another LUNG_BOX computes both masked
    variants anew and reuses only the full images' features."""
    dataset = write_signal_dataset(str(tmp_path / "d"), "corner", per_class=4, size=32)

    def cache_counts():
        report, out, _ = audit(dataset, tmp_path, "none", "--folds", "2", "--epochs", "1")
        [line] = [line for line in out.splitlines() if line.startswith("[INFO] feature cache")]
        return report["lung_box"]["fractions_left_top_right_bottom"], line.split(": ")[1]

    box, counts = cache_counts()
    assert box == [0.1, 0.1, 0.9, 0.9]
    # 8 images: as they are (features and description from one pass), and 2 masked variants
    assert counts.startswith("0 whole image(s) found, 8 computed; 0 image(s) found, 16 computed; "
                             "0 input check description(s) found, 8 computed;")
    monkeypatch.setattr(lungs, "LUNG_BOX", (0.2, 0.1, 0.9, 0.9))
    box, counts = cache_counts()
    assert box == [0.2, 0.1, 0.9, 0.9] and counts.startswith(
        "8 whole image(s) found, 0 computed; 0 image(s) found, 16 computed; "
        "8 input check description(s) found, 0 computed;")


def test_the_variants_hide_exactly_the_lung_box_or_all_but_it():
    # the end-to-end run above shows that lungs_only hides a signal outside the box; here, on
    # every pixel, that the two masks are exact complements along the box's edges (22..201)
    images = np.full((1, 224, 224, 3), 200 / 255, np.float32)
    transforms = audit_covid19.variant_transforms(lungs.box_lungs())
    none = np.zeros((1, 0), np.float32)
    hidden = np.asarray(transforms["lungs_hidden"].apply(images, none))[0, :, :, 0]
    only = np.asarray(transforms["lungs_only"].apply(images, none))[0, :, :, 0]
    box = np.zeros((224, 224), bool)
    box[22:202, 22:202] = True
    assert (hidden[box] == 0).all() and (hidden[~box] == np.float32(200 / 255)).all()
    assert (only[box] == np.float32(200 / 255)).all() and (only[~box] == 0).all()
    assert np.asarray(transforms["full"].apply(images, none)).tolist() == images.tolist()


@pytest.mark.slow
def test_with_three_classes_the_one_told_apart_without_the_lungs_is_named(tmp_path,
                                                                          monkeypatch):
    """Three classes, the pneumonia films marked in a corner: the audit probes each class
    against the rest, and its verdict names the class the lungs_hidden variant separates."""
    monkeypatch.setattr(keras.applications, "VGG16",
                        lambda **options: narrow_vgg16(options["input_shape"], width=4))
    dataset = write_signal_dataset(str(tmp_path / "three"), "corner", per_class=9,
                                   classes=("covid", "normal", "pneumonia"), marked="pneumonia")
    report, out, _ = audit(dataset, tmp_path, "none")
    hidden = report["probe"]["lungs_hidden"]
    assert set(hidden["per_class_auc"]) == {"covid", "normal", "pneumonia"}
    assert hidden["per_class_auc"]["pneumonia"]["value"] >= 0.8
    assert report["shortcut"] is True and "pneumonia (AUC" in report["verdict"]
    assert "covid (AUC" not in report["verdict"] and "positive_class" not in report
    assert np.array(hidden["confusion_matrix"]).shape == (3, 3)
    assert hidden["accuracy"]["trials"] == 27


@pytest.mark.parametrize("auc, ci, shortcut", [
    (0.93, [0.86, 0.98], True),
    (0.85, [0.45, 0.99], False),   # an interval that reaches chance is no evidence
    (0.75, [0.55, 0.90], False),   # above chance, but below the rule's 0.8
])
def test_the_verdict_needs_an_interval_above_chance_and_an_auc_of_0_8(auc, ci, shortcut):
    judged = audit_covid19.verdict({"auc": {"value": auc, "ci95": ci}})
    text = judged.text
    assert judged.shortcut is shortcut
    assert text.startswith("shortcut: the classes can be told apart" if shortcut
                           else "no shortcut found")
    assert f"AUC {auc:.2f}, 95% CI {ci[0]:.2f}-{ci[1]:.2f}" in text
    if not shortcut:
        assert text.endswith("This does not show that a model reads the lungs.")


def confounds_and_duplicates(dataset):
    """What the audit finds besides the probe, from the same functions on the same store: no
    VGG16 is needed for these."""
    images, paths, labels = load_dataset(dataset)
    with contextlib.closing(images):
        measured = confounds.measure(images, paths)
        properties = confounds.describe_properties(measured.rows, labels,
                                                       ["covid", "normal"], seed=0)
        copies = confounds.find_duplicates(images, paths, labels, measured.hashes)
    with contextlib.redirect_stdout(io.StringIO()) as out:
        audit_output.print_confounds_and_duplicates(dataset, properties.confounds, copies,
                                                     ["covid", "normal"])
    return properties.per_class, properties.confounds, copies, out.getvalue()


def test_classes_that_differ_only_in_size_are_a_size_confound(tmp_path):
    # the same flat content in both classes: only the stored size tells them apart
    rng = np.random.default_rng(2)
    for name, size in [("covid", 300), ("normal", 200)]:
        os.makedirs(tmp_path / "d" / name)
        for i in range(6):
            image = cv2.resize((100 + rng.integers(-10, 11, (20, 20))).astype(np.uint8),
                               (size, size), interpolation=cv2.INTER_NEAREST)
            cv2.imwrite(str(tmp_path / "d" / name / f"{i}.png"), image)
    per_class, confounds, _, out = confounds_and_duplicates(str(tmp_path / "d"))
    confounds = {c["property"]: c for c in confounds}
    assert "aspect_ratio" not in confounds and "channels" not in confounds
    for prop in ["width", "height"]:
        assert confounds[prop]["auc"]["value"] == 1.0 and confounds[prop]["higher_in"] == "covid"
        assert confounds[prop]["per_class"]["covid"]["median"] == 300
        assert confounds[prop]["per_class"]["normal"]["median"] == 200
    assert "[RESULT] confound: width alone separates covid from normal: AUC 1.00" in out
    assert per_class["covid"]["format"] == {"PNG": 6}


def test_a_file_in_both_classes_is_a_cross_class_duplicate(tmp_path):
    dataset = write_signal_dataset(str(tmp_path / "d"), None, per_class=4, size=64)
    shared = os.path.join(dataset, "normal", "normal-00.png")
    copy = os.path.join(dataset, "covid", "copied.png")
    with open(shared, "rb") as f, open(copy, "wb") as g:
        g.write(f.read())
    # and a near copy within a class: a picture with some structure (a bright disc), then the
    # same picture brighter by three levels, as a JPEG
    picture = cv2.imread(os.path.join(dataset, "covid", "covid-01.png"))
    cv2.circle(picture, (32, 32), 20, (230, 230, 230), -1)
    cv2.imwrite(os.path.join(dataset, "covid", "covid-01.png"), picture)
    cv2.imwrite(os.path.join(dataset, "covid", "covid-01-again.jpg"), picture + 3)
    _, _, found, out = confounds_and_duplicates(dataset)
    exact = [d for d in found if d["kind"] == "exact"]
    assert exact == [{"kind": "exact", "files": [copy, shared], "classes": ["covid", "normal"],
                      "cross_class": True, "distance": 0}]
    near_ones = [d for d in found if d["kind"] == "near"]
    assert [(sorted(os.path.basename(f) for f in d["files"]), d["cross_class"])
            for d in near_ones] == [(["covid-01-again.jpg", "covid-01.png"], False)]
    assert "[RESULT] CROSS-CLASS exact duplicate: covid/copied.png, normal/normal-00.png" in out


@pytest.mark.slow(seconds=10)
def test_command_line_run_in_a_subprocess(tmp_path):
    # the real VGG16 with random weights; in bfloat16 where the CPU computes it natively, as
    # the shipped dataset's training test runs it (float32 elsewhere)
    dataset = write_signal_dataset(str(tmp_path / "d"), "corner", per_class=2, size=32)
    precision = ["--precision", "bfloat16"] if cpu_has_native_bfloat16() else []
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "audit_covid19.py"), "--dataset", dataset,
         "--weights", "none", "--folds", "2", "--epochs", "1", *precision, "--cache-dir",
         str(tmp_path / "cache")], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert_no_tensorflow_log_lines(result.stderr)
    assert result.stdout.strip().splitlines()[-1] == (
        "[INFO] wrote audit.json (report), audit.png (plot)")
    assert sorted(os.listdir(tmp_path)) == ["audit.json", "audit.png", "cache", "d"]


# ---------------------------------------------------------------------------------------------
# Bad input: one line, nothing touched
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("counts, argv, phrases, exit_code", [
    ({"covid": 4}, [], ["the audit compares two classes or more; --dataset 'ds' has 1 (covid)"],
     1),
    ({"covid": 2, "normal": 4}, ["--folds", "3"],
     ["3 folds need at least 3 images of each class; the smallest class has 2"], 1),
    ({"covid": 4, "normal": 4}, ["--folds", "1"], ["--folds must be 2 or more, got 1"], 2),
    ({"covid": 4, "normal": 4}, ["--report", "ds/covid/audit.json"],
     ["--report 'ds/covid/audit.json' is inside --dataset 'ds'"], 1),
    ({"covid": 4, "normal": 4}, ["--plot", "no/audit.png"], ["--plot 'no/audit.png'",
                                                             "does not exist"], 1),
])
def test_the_audit_refuses_bad_input_in_one_line(tmp_path, monkeypatch, counts, argv, phrases,
                                                 exit_code):
    import audit_covid19

    monkeypatch.chdir(tmp_path)
    small_dataset(tmp_path / "ds", counts)
    (tmp_path / "audit.json").write_text("{}")
    before = snapshot(str(tmp_path))
    code, out, err = run_main(audit_covid19.main, ["--dataset", "ds", "--weights", "none",
                                                   "--epochs", "1", *argv])
    assert_one_line_error(code, err, "audit_covid19.py", *phrases, exit_code=exit_code)
    assert snapshot(str(tmp_path)) == before


def test_sigterm_while_cross_validating_keeps_the_earlier_report(tmp_path, monkeypatch):
    dataset = write_signal_dataset(str(tmp_path / "d"), None, per_class=2, size=32)
    monkeypatch.setattr(audit_covid19, "cross_validate", terminate_here)
    (tmp_path / "audit.json").write_text("{}")
    code, _, err = run_main(audit_covid19.main, [
        "--dataset", dataset, "--weights", "none", "--folds", "2",
        "--report", str(tmp_path / "audit.json"), "--plot", str(tmp_path / "audit.png"),
        "--cache-dir", str(tmp_path / "cache")])
    assert code == 143 and err.strip().splitlines()[-1] == (
        "audit_covid19.py: terminated (SIGTERM); no output was replaced")
    assert (tmp_path / "audit.json").read_text() == "{}"
    assert not (tmp_path / "audit.png").exists()


def test_lung_masks_hide_exactly_each_images_own_mask(tmp_path):
    """Where masks ship, lungs_hidden blacks out each image's own mask and lungs_only all but
    it, pixel for pixel, whatever the mask file's size (resized as the images are)."""
    for name, (top, bottom) in {"a": (10, 30), "b": (50, 90)}.items():
        mask = np.zeros((100, 100), np.uint8)
        mask[top:bottom, 20:80] = 255
        cv2.imwrite(str(tmp_path / f"{name}.png"), mask)
    paths = [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    store = ImageStore(paths)
    digests = ["image-a", "image-b"]
    slot_of = dict(zip(digests, store.slots(paths).tolist()))
    mask_of = dict(zip(digests, [store.digest(p) for p in paths]))
    images = np.full((2, 224, 224, 3), 0.5, np.float32)
    for keep in ("inside", "outside"):
        transform = LungMasks(keep, store, slot_of, mask_of)
        parameters, keys = transform.parameters_and_keys(digests, 1)
        changed = np.asarray(transform.apply(images, parameters))
        for k in range(2):
            lung = store.image(paths[k]).max(axis=-1) > 127  # the mask as images are read
            expected = np.where(lung if keep == "inside" else ~lung, np.float32(0.5), 0)
            np.testing.assert_array_equal(changed[k, :, :, 0], expected)
        # each entry names its image and its mask: another mask, another entry
        assert len(set(keys)) == 2 and keys != digests
    store.close()


def test_the_audit_uses_the_lung_masks_that_ship_with_the_images(tmp_path):
    dataset = radiography(tmp_path / "r", {"COVID": 4, "Normal": 4})
    report, out, _ = audit(dataset, tmp_path, "none", "--folds", "2", "--epochs", "1")
    assert report["lungs"] == "each image's own lung mask (8 from masks/)"
    kinds = {json.loads(path.read_text())["transform"]["kind"]
             for path in (tmp_path / "cache").glob("*/configuration.json")}
    assert kinds == {"Unchanged", "LungMasks"}  # no BoxMask
    assert report["counts"] == {"COVID": 4, "Normal": 4}  # the masks are no class


def test_a_mask_of_another_shape_or_unreadable_is_refused_for_its_image_and_named(tmp_path,
                                                                                   capsys):
    dataset = radiography(tmp_path / "r", {"COVID": 4, "Normal": 4})
    masks = os.path.join(dataset, "COVID", "masks")
    write_image(os.path.join(masks, "COVID-0.png"), seed=1, gray=True, size=(30, 60))  # stretched
    with open(os.path.join(masks, "COVID-1.png"), "wb") as f:
        f.write(b"not a PNG at all")
    write_image(os.path.join(masks, "COVID-2.png"), seed=2, gray=True, size=(60, 60))  # scaled
    images, paths, _ = load_dataset(dataset)
    capsys.readouterr()
    found = lungs.find_lungs(dataset, images, paths)
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"[WARNING] lung mask {os.path.join(masks, 'COVID-0.png')} refused: 60x30, another "
        "shape than its image (30x30); the fixed box is used for its image",
        f"[WARNING] lung mask {os.path.join(masks, 'COVID-1.png')} refused: cannot be read "
        "(not an image (no JPEG, PNG, BMP or TIFF signature, no DICOM marker)); the fixed box "
        "is used for its image"]
    assert found.about == ("each image's own lung mask (6 from masks/); the fixed box "
                           "[0.1, 0.1, 0.9, 0.9] for 2 whose mask was refused")
    # the two refused images are masked by the box, the scaled mask is its image's own
    box = np.zeros((224, 224), bool)
    top, bottom, left, right = lungs.lung_box().pixels()
    box[top:bottom, left:right] = True
    for name, boxed in [("COVID-0.png", True), ("COVID-1.png", True), ("COVID-2.png", False)]:
        digest = images.digest(os.path.join(dataset, "COVID", "images", name))
        mask = found.store.read([found.hidden.slot_of[digest]])[0].max(axis=-1) > 127
        assert np.array_equal(mask, box) == boxed
    found.close()
    images.close()
