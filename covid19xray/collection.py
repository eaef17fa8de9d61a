"""The public collections the dataset builders copy from, one class per source, as
torchxrayvision's `datasets` has one class per dataset: Cohen's COVID-19 image collection
(`cohen`), Kaggle's Chest X-Ray Images (`kaggle`), NIH ChestX-ray14 (`nih`) and COVIDx
(`covidx`). The folders a run trains on are read by `layout`.

Each class reads its collection's own layout (a label file, a metadata.csv, class folders) and
gives its films: each one's path, label, patient and source, and the further cells the
dataset's manifest keeps of it (licence, URL, age, view). No collection holds masks. A builder
asks its collection for these and decides only which films to copy; adding a collection is one
class and its tests.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Film:
    """One image of a public collection."""

    path: str  # the image file (a path inside a download's cache for a remote collection)
    label: str  # its class as the collection names it (Cohen's finding, NIH's Finding Labels)
    patient: str  # the collection's patient id (or, where it has none, the file's name)
    source: str  # where it comes from: the manifest's `source` column
    cells: dict = dataclasses.field(default_factory=dict)  # licence, URL, age, view...


class Collection:
    """A public collection, read from its own layout: its `films`, and their paths, labels,
    patients and sources in the same order. `name` is what a dataset's manifest says of the
    films copied from it (`source` for those whose film carries no other)."""

    name = ""

    def __init__(self, films=()):
        self.films = list(films)
        self._film_of = {}

    # each film's path, label, patient and source, in the order of `films`
    paths, labels, patients, sources = (
        property(lambda self, field=field: [getattr(film, field) for film in self.films])
        for field in ("path", "label", "patient", "source"))

    def film(self, path):
        """The film at `path`."""
        if path not in self._film_of:  # films may be added as they are found (NIH's)
            self._film_of = {film.path: film for film in self.films}
        return self._film_of[path]

    def manifest_cells(self, path):
        """What a dataset's manifest keeps of the film at `path`: its patient, then its cells."""
        film = self.film(path)
        return {"patient_id": film.patient, **film.cells}

    def is_mask(self, path):
        """Whether `path` is a lung mask, never an image: no public collection here ships one."""
        return False
