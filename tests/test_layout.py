"""covid19xray.layout: a dataset layout is one class; defining it is all it takes for the
scripts to read a folder laid out that way."""

import os

import pytest

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
from helpers import radiography, small_dataset, write_image


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
