"""sample_kaggle_dataset.py: only healthy images, the same sample on every machine."""

import os
import subprocess
import sys

import pytest

import sample_kaggle_dataset
from covid19xray import progress
from helpers import (
    NOT_UTF8,
    ROOT,
    assert_one_line_error,
    output_cases,
    progress_counts,
    run_main,
    snapshot,
    write_image,
    write_kaggle,
)
from helpers import expected_kaggle_sample as expected_sample


def sample(kaggle, output, *extra):
    return run_main(sample_kaggle_dataset.main, ["--kaggle", kaggle, "--output", output, *extra])


def test_samples_only_train_normal_reproducibly(tmp_path, monkeypatch):
    kaggle = write_kaggle(str(tmp_path / "chest_xray"))
    before = snapshot(kaggle)
    monkeypatch.setattr(progress, "LOG_INTERVAL", 0)  # a progress line for every update
    code, out, err = sample(kaggle, str(tmp_path / "dataset" / "normal"))
    assert code == 0, err
    copying = progress_counts(err, "copying")
    assert copying[0] == (0, 25) and copying[-1] == (25, 25) and len(copying) == 26
    copied = sorted(os.listdir(tmp_path / "dataset" / "normal"))
    assert copied == expected_sample("train", "NORMAL", 25)
    assert all(name.startswith(("IM-", "NORMAL2-IM-")) for name in copied)
    assert out.strip().splitlines()[-1] == (
        "[INFO] images found: 30, sampled: 25, copied: 25, already present: 0, refused: 0, "
        "conflicts: 0")
    assert snapshot(kaggle) == before

    # rerun: nothing copied, nothing changed
    output_before = snapshot(str(tmp_path / "dataset" / "normal"))
    code, out, _ = sample(kaggle, str(tmp_path / "dataset" / "normal"))
    assert code == 0 and "copied: 0, already present: 25, refused: 0, conflicts: 0" in out
    assert snapshot(str(tmp_path / "dataset" / "normal")) == output_before


def test_the_zips_nested_layout_and_other_seeds(tmp_path):
    write_kaggle(str(tmp_path / "download" / "chest_xray" / "chest_xray"))
    code, _, err = sample(str(tmp_path / "download" / "chest_xray"), str(tmp_path / "out"),
                          "--sample", "10", "--seed", "3")
    assert code == 0, err
    assert sorted(os.listdir(tmp_path / "out")) == expected_sample("train", "NORMAL", 10, seed=3)


def test_split_and_label_flags(tmp_path):
    kaggle = write_kaggle(str(tmp_path / "chest_xray"))
    code, _, _ = sample(kaggle, str(tmp_path / "pneumonia"), "--split", "test",
                        "--label", "PNEUMONIA", "-s", "5")
    assert code == 0
    assert sorted(os.listdir(tmp_path / "pneumonia")) == expected_sample("test", "PNEUMONIA", 5)


def test_fewer_images_than_asked_copies_all_and_says_so(tmp_path):
    kaggle = write_kaggle(str(tmp_path / "chest_xray"))
    code, out, _ = sample(kaggle, str(tmp_path / "out"), "--split", "val")
    assert code == 0
    assert "has only 4 images, fewer than --sample 25: copying all of them" in out
    assert sorted(os.listdir(tmp_path / "out")) == expected_sample("val", "NORMAL", 4)


def test_folder_without_train_normal_lists_what_it_contains(tmp_path):
    (tmp_path / "wrong" / "images").mkdir(parents=True)
    (tmp_path / "wrong" / "metadata.csv").write_text("x")
    code, _, err = sample(str(tmp_path / "wrong"), str(tmp_path / "out"))
    assert code == 1
    assert err.strip() == (
        f"sample_kaggle_dataset.py: error: --kaggle '{tmp_path / 'wrong'}' has no train/NORMAL "
        "folder (nor chest_xray/train/NORMAL); it contains: images, metadata.csv")
    assert not (tmp_path / "out").exists()


def test_conflicting_file_is_kept_and_reported(tmp_path):
    kaggle = write_kaggle(str(tmp_path / "chest_xray"))
    victim = expected_sample("train", "NORMAL", 25)[0]
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / victim).write_bytes(b"mine")
    code, out, err = sample(kaggle, str(tmp_path / "out"))
    assert code == 1
    assert (tmp_path / "out" / victim).read_bytes() == b"mine"
    assert "copied: 24, already present: 0, refused: 0, conflicts: 1" in out
    assert f"not overwriting {tmp_path / 'out' / victim}" in err


@pytest.mark.parametrize("flags, message", [
    (["--sample", "0"], "argument -s/--sample: must be a finite number greater than 0, got 0 "
                        "(see --help)"),
    (["--label", "normal"], "argument --label: invalid choice: 'normal'"),
])
def test_bad_flags_are_one_line_usage_errors(tmp_path, flags, message):
    code, _, err = sample(str(tmp_path), str(tmp_path / "out"), *flags)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("sample_kaggle_dataset.py: error: ")
    assert message in err
    assert not (tmp_path / "out").exists()


def test_command_line_run_in_a_subprocess(tmp_path):
    write_kaggle(str(tmp_path / "chest_xray"))
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "sample_kaggle_dataset.py"),
         "--kaggle", "chest_xray", "--output", os.path.join("dataset", "normal")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(tmp_path / "dataset" / "normal")) == expected_sample(
        "train", "NORMAL", 25)


# ---------------------------------------------------------------------------------------------
# Bad input: one line, nothing touched
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["output is a file", "output under a file",
                                  "output is the source", "output inside the source"])
def test_kaggle_sampler_refuses_bad_outputs(tmp_path, case):
    kaggle = write_kaggle(str(tmp_path / "chest_xray"))
    output, phrases = output_cases(tmp_path, kaggle)[case]
    before = snapshot(str(tmp_path))
    code, _, err = run_main(sample_kaggle_dataset.main, ["--kaggle", kaggle, "--output", output])
    assert_one_line_error(code, err, "sample_kaggle_dataset.py", "--output", *phrases)
    assert snapshot(str(tmp_path)) == before


@pytest.mark.parametrize("make, phrases", [
    (lambda root: None, ["--kaggle", "is not a folder"]),
    (lambda root: os.makedirs(os.path.join(root, "train", "PNEUMONIA")),
     ["has no train/NORMAL folder", "it contains: train"]),
    (lambda root: os.makedirs(os.path.join(root, "train", "NORMAL")), ["has no images"]),
])
def test_kaggle_sampler_bad_sources(tmp_path, make, phrases):
    kaggle = str(tmp_path / "chest_xray")
    make(kaggle)
    code, _, err = run_main(sample_kaggle_dataset.main,
                            ["--kaggle", kaggle, "--output", str(tmp_path / "out")])
    assert_one_line_error(code, err, "sample_kaggle_dataset.py", *phrases)
    assert not (tmp_path / "out").exists()


def test_a_kaggle_image_named_not_utf8_is_copied_and_listed_as_it_is(tmp_path):
    kaggle = write_kaggle(str(tmp_path / "chest_xray"))
    folder = os.path.join(kaggle, "train", "NORMAL")
    for name in os.listdir(folder):
        if not name.startswith("."):
            os.remove(os.path.join(folder, name))
    write_image(os.path.join(folder, NOT_UTF8), seed=3, size=(24, 24))
    code, out, err = run_main(sample_kaggle_dataset.main, [
        "--kaggle", kaggle, "--output", str(tmp_path / "ds" / "normal")])
    assert code == 0, err
    assert os.listdir(tmp_path / "ds" / "normal") == [NOT_UTF8]
    with open(tmp_path / "ds" / "manifest.csv", encoding="utf-8", errors="surrogateescape") as f:
        assert f"normal/{NOT_UTF8}," in f.read()
