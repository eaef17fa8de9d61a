"""covid19xray.layout: a dataset layout is one class; defining it is all it takes for the
scripts to read a folder laid out that way."""

import os

import pytest

import train_covid19
from covid19xray import layout
from covid19xray.layout import (
    LAYOUTS,
    ClassFolders,
    DatasetLayout,
    RadiographyDatabase,
    find_dataset,
    is_mask,
    label_of,
    load_dataset,
)
from helpers import (
    assert_one_line_error,
    outputs_in,
    radiography,
    run_main,
    small_dataset,
    write_image,
)


@pytest.fixture
def layouts(monkeypatch):
    """The registry, restored after the test: a layout a test defines does not outlive it."""
    monkeypatch.setattr(layout, "LAYOUTS", list(LAYOUTS))
    return layout.LAYOUTS


def test_the_registry_asks_the_most_specific_layout_first():
    assert LAYOUTS.index(RadiographyDatabase) < LAYOUTS.index(ClassFolders)


def test_a_new_layout_is_one_class(tmp_path, layouts):
    """A toy layout, files named `<class>__<n>.png` in one flat folder, defined here and
    nowhere else: the dataset is found, loaded with its classes, and predict's `label_of`
    names each file's class."""

    class FlatNamed(DatasetLayout):
        priority = 5

        @classmethod
        def matches(cls, relative):
            return all(len(parts) == 1 and "__" in parts[0] for parts in relative)

        @classmethod
        def image_class(cls, parts):
            return parts[0].split("__")[0] if len(parts) == 1 else None

        @classmethod
        def label_of(cls, path):
            name = os.path.basename(path)
            return name.split("__")[0] if "__" in name else None

    for label in ("covid", "normal"):
        for n in range(2):
            write_image(str(tmp_path / f"{label}__{n}.png"), seed=n, size=(30, 30))
    found = find_dataset(str(tmp_path))
    assert isinstance(found, FlatNamed) and found.labels == ["covid", "covid", "normal", "normal"]
    images, paths, labels = load_dataset(str(tmp_path))
    assert [label_of(path) for path in paths] == list(labels) == found.labels
    images.close()


def test_class_folders_and_the_radiography_database_keep_their_classes_and_masks(tmp_path):
    plain = small_dataset(tmp_path / "p", {"covid": 2, "normal": 1})
    found = find_dataset(plain)
    assert type(found) is ClassFolders and found.labels == ["covid", "covid", "normal"]
    assert found.masks == {} and found.summary() is None
    database = radiography(tmp_path / "r", {"COVID": 2, "Normal": 1})
    found = find_dataset(database)
    assert type(found) is RadiographyDatabase and found.labels == ["COVID", "COVID", "Normal"]
    assert len(found.masks) == 3 and all(is_mask(mask) for mask in found.masks.values())
    assert not any(is_mask(path) for path in found.paths)
    assert [label_of(path) for path in found.paths] == found.labels


@pytest.mark.parametrize("first, second", [("Covid", "covid"),
                                           ("norm\u00e9", "norme\u0301")])
def test_class_folders_that_differ_only_by_case_or_normalization_are_refused(tmp_path, first,
                                                                             second):
    from covid19xray.cli import UserError

    for name, seed in ((first, 1), (second, 2), ("other", 3)):
        write_image(str(tmp_path / "d" / name / "x.png"), seed=seed, size=(30, 30))
    with pytest.raises(UserError) as refused:
        layout.find_dataset(str(tmp_path / "d"))
    message = str(refused.value)
    assert "\n" not in message and "differ only by case or Unicode normalization" in message
    assert ascii(first) in message and ascii(second) in message


def test_the_radiography_layout_reads_images_by_class_and_never_a_mask(tmp_path):
    dataset = radiography(tmp_path / "r", {"COVID": 3, "Normal": 2})
    layout = find_dataset(dataset)
    assert layout.labels == ["COVID"] * 3 + ["Normal"] * 2
    assert all(os.sep + "images" + os.sep in path for path in layout.paths)
    assert {os.path.relpath(m, dataset) for m in layout.masks.values()} == {
        os.path.join(name, "masks", f"{name}-{i}.png")
        for name, n in (("COVID", 3), ("Normal", 2)) for i in range(n)}
    images, paths, labels = load_dataset(dataset)
    images.close()
    assert paths == layout.paths and labels.tolist() == layout.labels


def one_radiography_class(root):
    radiography(root, {"COVID": 2})
    return os.path.join(root, "COVID")


def kaggle_as_unpacked(root):
    small_dataset(os.path.join(root, "train"), {"NORMAL": 2, "PNEUMONIA": 2})
    return root


def loose_image(root):
    small_dataset(root, {"covid": 2})
    write_image(os.path.join(root, "loose.png"), seed=1)
    return root


@pytest.mark.parametrize("make, phrase", [
    # one class of the Radiography Database given as the dataset: "images" and "masks"
    (one_radiography_class, "is one class of the COVID-19 Radiography Database"),
    # Kaggle's download as it unpacks: train/NORMAL/x.png
    (kaggle_as_unpacked, "4 image(s) are not in a class folder (train/NORMAL/0.png"),
    # an image directly in the folder
    (loose_image, "1 image(s) are not in a class folder (loose.png)"),
])
def test_a_layout_that_fits_neither_is_refused_in_one_line_before_training(tmp_path, make,
                                                                             phrase):
    dataset = make(str(tmp_path / "d"))
    code, out, err = run_main(train_covid19.main, ["--dataset", dataset, "--weights", "none",
                                                   *outputs_in(tmp_path)])
    assert_one_line_error(code, err, "train_covid19.py", phrase)
    assert "[INFO] training head..." not in out


def test_a_class_folder_that_is_a_symbolic_link_is_not_entered(tmp_path):
    """As imutils did: a linked folder is not entered, so its class is missing, and a
    dataset left with one class is refused in one line (docs/troubleshooting.md)."""
    small_dataset(tmp_path / "elsewhere", {"normal": 3})
    dataset = small_dataset(tmp_path / "d", {"covid": 3})
    os.symlink(tmp_path / "elsewhere" / "normal", tmp_path / "d" / "normal")
    code, out, err = run_main(train_covid19.main, ["--dataset", dataset, "--weights", "none",
                                                   "--model", str(tmp_path / "m.h5"),
                                                   "--plot", str(tmp_path / "p.png"),
                                                   "--report", str(tmp_path / "r.json"),
                                                   "--cache-dir", str(tmp_path / "c")])
    assert code == 1 and "1 class folder(s) (covid)" in err.strip().splitlines()[-1]
