"""Bad input never ends in a traceback, a wasted run or lost data.

Every case runs a script's main() on a broken input and checks three things a user would
notice: the exit code, the one line on stderr (which names the file or flag and what to do),
and that no file in the source data or among earlier outputs changed (checksums before/after).
"""

import hashlib
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

import build_covid_dataset
import sample_kaggle_dataset
from conftest import ROOT, make_dataset, run_main, write_image
from test_build_covid_dataset import write_collection
from test_sample_kaggle_dataset import write_kaggle


def checksums(*folders):
    """{path: sha256} of every file under `folders` (a missing folder has none)."""
    result = {}
    for folder in folders:
        for base, _, files in os.walk(folder):
            for name in files:
                path = os.path.join(base, name)
                with open(path, "rb") as f:
                    result[path] = hashlib.sha256(f.read()).hexdigest()
    return result


def assert_one_line_error(code, err, script, *phrases, exit_code=1):
    assert code == exit_code, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{script}: error: ")
    for phrase in phrases:
        assert phrase in lines[0]


# ---------------------------------------------------------------------------------------------
# build_covid_dataset.py
# ---------------------------------------------------------------------------------------------

HEADER = "patientid,finding,view,filename"


def covid_with_metadata(tmp_path, content):
    covid = tmp_path / "covid-chestxray-dataset"
    write_image(str(covid / "images" / "a.jpg"), seed=1, size=(32, 32))
    if content is not None:
        (covid / "metadata.csv").write_bytes(content)
    return str(covid)


@pytest.mark.parametrize("content, phrases", [
    (None, ["has no metadata.csv", "point it at a checkout of Cohen's"]),
    (b"", ["metadata.csv is empty"]),
    (b"\r\n", ["metadata.csv is empty"]),
    (HEADER.encode() + b"\n", ["metadata.csv has a header but no rows"]),
    (b"patientid,view,filename\n1,PA,a.jpg\n", ["has no finding column", "patientid,view,filename"]),
    (b"patientid,finding,filename\n1,COVID-19,a.jpg\n", ["has no view column"]),
    (b"patientid,finding,view\n1,COVID-19,PA\n", ["has no filename column"]),
    (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", ["has no finding, view, filename column"]),
    (HEADER.encode() + b"\n1,COVID-19,PA,gone.jpg\n2,SARS,PA,a.jpg\n",
     ["none of the 1 matching rows has its image", "missing files: 1, refused: 0",
      "is the checkout complete"]),
])
def test_broken_metadata_is_one_line_and_touches_nothing(tmp_path, content, phrases):
    covid = covid_with_metadata(tmp_path, content)
    output = tmp_path / "dataset" / "covid"
    before = checksums(covid)
    code, out, err = run_main(build_covid_dataset.main, ["--covid", covid, "--output", str(output)])
    assert_one_line_error(code, err, "build_covid_dataset.py", *phrases)
    assert checksums(covid) == before
    assert not output.exists()  # nothing is created before the metadata is understood


def test_a_nul_byte_in_a_filename_is_refused_not_a_crash(tmp_path):
    covid = covid_with_metadata(tmp_path, HEADER.encode() + b"\n1,COVID-19,PA,a\0.jpg\n"
                                b"2,COVID-19,PA,a.jpg\n")
    code, out, err = run_main(build_covid_dataset.main,
                              ["--covid", covid, "--output", str(tmp_path / "out")])
    assert code == 0, err
    assert err == "[WARNING] refusing 'a\\x00.jpg': not a file inside --covid\n"
    assert "copied: 1" in out and "refused: 1" in out
    assert os.listdir(tmp_path / "out") == ["a.jpg"]


@pytest.mark.parametrize("encoding, delimiter", [
    ("utf-16", ","),      # a spreadsheet's "Unicode text", with its byte-order mark
    ("cp1252", ","),      # Windows' default; the notes hold a byte that is not UTF-8
    ("utf-8-sig", ";"),   # a European spreadsheet's CSV
    ("utf-8", "\t"),
])
def test_metadata_in_other_encodings_and_delimiters_still_builds(tmp_path, encoding, delimiter):
    rows = [HEADER + ",notes", "1,COVID-19,PA,a.jpg,São Paulo", "2,SARS,PA,b.jpg,x"]
    covid = covid_with_metadata(tmp_path, delimiter.join(rows[0].split(",")).encode())
    write_image(os.path.join(covid, "images", "b.jpg"), seed=2, size=(32, 32))
    text = "\r\n".join(delimiter.join(row.split(",")) for row in rows) + "\r\n"
    with open(os.path.join(covid, "metadata.csv"), "wb") as f:
        f.write(text.encode(encoding))
    output = tmp_path / "out"
    code, out, err = run_main(build_covid_dataset.main, ["--covid", covid, "--output", str(output)])
    assert code == 0, err
    assert os.listdir(output) == ["a.jpg"]
    assert "rows read: 2, rows matched: 1, copied: 1" in out


def output_cases(tmp_path, source):
    """(name, --output value) for every output a builder must refuse."""
    a_file = tmp_path / "a-file"
    a_file.write_text("keep me")
    return {
        "output is a file": (str(a_file), ["is a file, not a folder"]),
        "output under a file": (str(a_file / "covid"), ["cannot be created"]),
        "output is the source": (source, ["source data is never modified"]),
        "output inside the source": (os.path.join(source, "images"),
                                     ["source data is never modified"]),
    }


@pytest.mark.parametrize("case", ["output is a file", "output under a file",
                                  "output is the source", "output inside the source"])
def test_covid_builder_refuses_bad_outputs(tmp_path, case):
    covid = write_collection(str(tmp_path / "c"), "current")
    output, phrases = output_cases(tmp_path, covid)[case]
    before = checksums(str(tmp_path))
    code, _, err = run_main(build_covid_dataset.main, ["--covid", covid, "--output", output])
    assert_one_line_error(code, err, "build_covid_dataset.py", "--output", *phrases)
    assert checksums(str(tmp_path)) == before


def test_unwritable_output_folder(tmp_path, monkeypatch):
    # Tests may run as root, for whom chmod does not block writing: ask os.access instead.
    covid = write_collection(str(tmp_path / "c"), "current")
    output = tmp_path / "read-only"
    output.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: (
        False if os.path.abspath(path) == str(output) else real_access(path, mode)))
    code, _, err = run_main(build_covid_dataset.main, ["--covid", covid, "--output", str(output)])
    assert_one_line_error(code, err, "build_covid_dataset.py", f"--output '{output}' is not "
                          "writable")
    assert os.listdir(output) == []


# ---------------------------------------------------------------------------------------------
# sample_kaggle_dataset.py
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["output is a file", "output under a file",
                                  "output is the source", "output inside the source"])
def test_kaggle_sampler_refuses_bad_outputs(tmp_path, case):
    kaggle = write_kaggle(str(tmp_path / "chest_xray"))
    output, phrases = output_cases(tmp_path, kaggle)[case]
    before = checksums(str(tmp_path))
    code, _, err = run_main(sample_kaggle_dataset.main, ["--kaggle", kaggle, "--output", output])
    assert_one_line_error(code, err, "sample_kaggle_dataset.py", "--output", *phrases)
    assert checksums(str(tmp_path)) == before


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
