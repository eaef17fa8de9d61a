"""sample_nih_dataset.py: adult "No Finding" films from NIH's layout, the same sample everywhere."""

import csv
import hashlib
import os
import subprocess
import sys

import pytest

import sample_nih_dataset
from helpers import (
    NIH_SELECTED,
    NIH_SELECTED_PA,
    ROOT,
    assert_one_line_error,
    expected_nih_sample,
    run_main,
    snapshot,
    write_nih,
)


def nih_sample(nih, output, *extra):
    return run_main(sample_nih_dataset.main, ["--nih", nih, "--output", output, *extra])


def manifest_rows(dataset):
    with open(os.path.join(dataset, "manifest.csv"), newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("archives", [True, False], ids=["images_NNN", "images"])
def test_selects_adult_no_finding_films_one_per_patient(tmp_path, archives):
    nih = write_nih(str(tmp_path / "nih"), archives=archives)
    before = snapshot(nih)
    code, out, err = nih_sample(nih, str(tmp_path / "data" / "normal"))
    assert code == 0, err
    assert sorted(os.listdir(tmp_path / "data" / "normal")) == NIH_SELECTED
    assert "[INFO] rows read: 22, films selected: 15, missing files: 0, copied: 15" in out
    assert "NIH asks you to acknowledge the NIH Clinical Center's ChestX-ray14" in out
    assert snapshot(nih) == before  # source data untouched
    rows = manifest_rows(str(tmp_path / "data"))
    assert [row["file"] for row in rows] == [f"normal/{name}" for name in NIH_SELECTED]
    first = rows[0]
    assert (first["patient_id"], first["age"], first["view"], first["source"]) == (
        "1", "45", "PA", "nih")
    assert first["url"] == "https://nihcc.app.box.com/v/ChestXray-NIHCC"
    for row in rows:  # byte for byte
        with open(tmp_path / "data" / row["file"], "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == row["sha256"]


def test_view_limit_and_seed_select_exactly_and_the_same_twice(tmp_path):
    nih = write_nih(str(tmp_path / "nih"))
    code, _, err = nih_sample(nih, str(tmp_path / "pa"), "--view", "PA")
    assert code == 0, err
    assert sorted(os.listdir(tmp_path / "pa")) == NIH_SELECTED_PA
    for attempt in range(2):
        code, out, err = nih_sample(nih, str(tmp_path / "sample" / "normal"), "--limit", "5",
                                    "--seed", "3")
        assert code == 0, err
        assert sorted(os.listdir(tmp_path / "sample" / "normal")) == expected_nih_sample(
            NIH_SELECTED, 5, seed=3)
        assert ("copied: 5, already present: 0" if attempt == 0
                else "copied: 0, already present: 5") in out
    code, _, err = nih_sample(nih, str(tmp_path / "young"), "--min-age", "40")
    assert code == 0, err
    assert sorted(os.listdir(tmp_path / "young")) == [
        "00000001_000.png", "00000003_001.png", "00000005_000.png"]


def test_exclude_patients_leaves_out_a_training_sets_patients(tmp_path):
    nih = write_nih(str(tmp_path / "nih"))
    assert nih_sample(nih, str(tmp_path / "train" / "normal"), "--limit", "5")[0] == 0
    code, out, err = nih_sample(nih, str(tmp_path / "test" / "normal"), "--exclude-patients",
                                str(tmp_path / "train" / "manifest.csv"))
    assert code == 0, err
    train = set(os.listdir(tmp_path / "train" / "normal"))
    test = set(os.listdir(tmp_path / "test" / "normal"))
    assert train | test == set(NIH_SELECTED) and not train & test
    assert {row["excluded_patients_of"] for row in manifest_rows(str(tmp_path / "test"))} == {
        str(tmp_path / "train" / "manifest.csv")}


def test_missing_films_are_counted_in_one_warning(tmp_path):
    nih = write_nih(str(tmp_path / "nih"))
    os.remove(os.path.join(nih, "images_001", "images", "00000001_000.png"))
    code, out, err = nih_sample(nih, str(tmp_path / "out"))
    assert code == 0, err
    assert err.strip() == ("[WARNING] 1 selected film(s) named in the label file are not in the "
                           "image folders (00000001_000.png); sampling from the 14 found")
    assert sorted(os.listdir(tmp_path / "out")) == NIH_SELECTED[1:]


def rewrite_label_file(nih, edit):
    path = os.path.join(nih, "Data_Entry_2017_v2020.csv")
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(edit(text))


@pytest.mark.parametrize("damage, phrases", [
    ("no label file", ["has no label file (Data_Entry_2017_v2020.csv or Data_Entry_2017.csv)"]),
    ("no Patient Age column", ["has no Patient Age column"]),
    ("an age that is not a number", ["line 3: Patient Age '058Y' of '00000001_001.png' is not "
                                     "a whole number"]),
    ("a field over csv's limit", ["not a readable CSV file (field larger than field limit"]),
    ("no films at all", ["none of the 15 selected films is in --nih"]),
    ("a finding no row has", ['no row is left after the filter finding "Hernia" (of 22 rows']),
])
def test_bad_input_is_one_line_and_copies_nothing(tmp_path, damage, phrases):
    nih = write_nih(str(tmp_path / "nih"))
    extra = []
    if damage == "no label file":
        os.remove(os.path.join(nih, "Data_Entry_2017_v2020.csv"))
    elif damage == "no Patient Age column":
        rewrite_label_file(nih, lambda text: text.replace("Patient Age", "Age", 1))
    elif damage == "an age that is not a number":
        rewrite_label_file(nih, lambda text: text.replace(",1,46,", ",1,058Y,", 1))
    elif damage == "a field over csv's limit":
        rewrite_label_file(nih, lambda text: text.replace("Effusion", '"' + "x" * 200_000 + '"',
                                                          1))
    elif damage == "no films at all":
        for folder in ("images_001", "images_002"):
            os.rename(os.path.join(nih, folder), os.path.join(nih, f"old_{folder}"))
    else:
        extra = ["--finding", "Hernia"]
    code, _, err = nih_sample(nih, str(tmp_path / "out" / "normal"), *extra)
    assert_one_line_error(code, err, "sample_nih_dataset.py", *phrases)
    assert not (tmp_path / "out").exists()


def test_command_line_run_in_a_subprocess(tmp_path):
    write_nih(str(tmp_path / "nih"))
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "sample_nih_dataset.py"), "--nih", "nih",
         "--output", os.path.join("data", "normal"), "--limit", "4"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(tmp_path / "data" / "normal")) == expected_nih_sample(
        NIH_SELECTED, 4)
