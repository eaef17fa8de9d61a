"""covid19xray.collection and its classes, one per public collection the builders copy from:
each gives its films' paths, labels, patients and sources, in one order, and what a manifest
keeps of each."""

import os

from covid19xray.cohen import CohenCollection, finding_labels
from covid19xray.collection import Collection, Film
from covid19xray.covidx import Covidx
from covid19xray.kaggle import KAGGLE_URL, KaggleChestXray, kaggle_patient
from covid19xray.nih import NIH_LICENSE, NihChestXray14
from helpers import (
    KAGGLE_COUNTS,
    kaggle_name,
    write_collection,
    write_image,
    write_kaggle,
    write_nih,
)


def test_kaggle_gives_one_class_folder_of_one_split_with_each_films_patient(tmp_path):
    root = str(tmp_path / "chest_xray")
    write_kaggle(root)
    kaggle = KaggleChestXray(str(tmp_path), "test", "PNEUMONIA")  # the zip's nesting, found
    names = sorted(kaggle_name("test", "PNEUMONIA", i) for i in range(KAGGLE_COUNTS[
        ("test", "PNEUMONIA")]))
    assert kaggle.folder == os.path.join(root, "test", "PNEUMONIA")
    assert kaggle.paths == [os.path.join(kaggle.folder, name) for name in names]  # no .DS_Store
    assert kaggle.labels == ["PNEUMONIA"] * len(names)
    assert kaggle.patients == [name.split("_")[0] for name in names]
    assert kaggle.sources == ["kaggle"] * len(names)
    assert kaggle.manifest_cells(kaggle.paths[0]) == {
        "patient_id": kaggle.patients[0], "license": "CC BY 4.0", "url": KAGGLE_URL}
    assert not any(kaggle.is_mask(path) for path in kaggle.paths)


def test_kaggle_patients_come_from_the_file_names():
    assert kaggle_patient("x/person1102_bacteria_2957.jpeg") == "person1102"
    assert kaggle_patient("person3_virus_16.jpeg") == "person3"
    assert kaggle_patient("IM-0033-0001.jpeg") == "IM-0033"
    assert kaggle_patient("IM-0033-0001-0002.jpeg") == "IM-0033"
    assert kaggle_patient("NORMAL2-IM-1427-0001.jpeg") == "NORMAL2-IM-1427"
    assert kaggle_patient("scan.png") == "scan"


def test_nih_reads_its_rows_then_finds_only_the_films_asked_for(tmp_path):
    nih = NihChestXray14(write_nih(str(tmp_path / "nih")))
    rows = nih.read_rows()
    asked = [row for row in rows if row["Patient ID"] in ("3", "6")]
    os.remove(os.path.join(nih.folder, "images_001", "images", "00000003_001.png"))  # missing
    films = nih.locate(asked)
    assert [os.path.basename(path) for path in nih.paths] == ["00000003_000.png",
                                                              "00000006_000.png"]
    assert films == nih.films
    assert nih.labels == ["Effusion", "Infiltration|Effusion"]
    assert nih.patients == ["3", "6"] and nih.sources == ["nih", "nih"]
    assert nih.manifest_cells(nih.paths[1]) == {
        "patient_id": "6", "age": "50", "view": "PA", "license": NIH_LICENSE,
        "url": "https://nihcc.app.box.com/v/ChestXray-NIHCC"}


def test_cohen_finds_each_distinct_file_of_its_rows_and_counts_the_rest(tmp_path):
    checkout = write_collection(str(tmp_path / "covid"), "current")
    cohen = CohenCollection(checkout, str(tmp_path / "cache"))
    columns, rows, shown_as = cohen.read_metadata()
    assert "patientid" in columns and shown_as == os.path.join(checkout, "metadata.csv")
    films, counts = cohen.locate(rows)
    assert counts == {"missing files": 1, "refused": 1, "duplicates": 1}
    assert [os.path.relpath(path, checkout) for path in cohen.paths] == [
        "images/a.jpg", "images/b.jpg", "images/c.jpg", "images/d.png", "images/e.jpg",
        "images/f.jpg", "images/g.jpeg", "images/h.jpg", "volumes/v.jpg"]
    # the patient is the row's patientid (its index in the file written)
    assert cohen.patients == ["0", "1", "2", "3", "7", "8", "10", "9", "11"]
    assert cohen.labels[2] == "Pneumonia/Viral/SARS" and set(cohen.sources) == {"cohen"}
    assert cohen.manifest_cells(cohen.paths[0]) == {"patient_id": "0", "age": "", "view": "PA",
                                                    "license": "", "url": ""}


def test_covidx_gives_a_splits_films_as_its_label_file_says(tmp_path):
    for name in ("a.png", "b.png"):
        write_image(str(tmp_path / "train" / name), seed=1, size=(40, 40))
    (tmp_path / "train.txt").write_text("p1 a.png positive rsna\nbad line\np2 b.png negative "
                                        "cohen\n")
    covidx = Covidx(str(tmp_path), "train")
    assert covidx.paths == [str(tmp_path / "train" / "a.png"), str(tmp_path / "train" / "b.png")]
    assert (covidx.labels, covidx.patients, covidx.sources) == (
        ["positive", "negative"], ["p1", "p2"], ["rsna", "cohen"])
    assert covidx.left_out == 1
    assert covidx.manifest_cells(covidx.paths[1]) == {"patient_id": "p2", "source": "cohen"}


def test_a_new_collection_is_one_class():
    """What a builder asks of a collection comes with the base class: a toy collection of two
    films answers it without another module knowing of it."""

    class Toy(Collection):
        name = "toy"

        def __init__(self):
            super().__init__([Film("x/1.png", "covid", "p1", "toy", {"license": "CC0"}),
                              Film("x/2.png", "normal", "p2", "toy")])

    toy = Toy()
    assert (toy.paths, toy.labels, toy.patients, toy.sources) == (
        ["x/1.png", "x/2.png"], ["covid", "normal"], ["p1", "p2"], ["toy", "toy"])
    assert toy.manifest_cells("x/1.png") == {"patient_id": "p1", "license": "CC0"}
    assert not toy.is_mask("x/1.png")


def test_finding_labels_split_on_slash_and_comma():
    labels = finding_labels
    assert labels("Pneumonia/Viral/COVID-19") == {"pneumonia", "viral", "covid-19"}
    assert labels("COVID-19, ARDS") == {"covid-19", "ards"}
    assert "covid-19" not in labels("Pneumonia/Viral/MERS-CoV") | labels("SARS")
