"""Kaggle's Chest X-Ray Images (Pneumonia) (Kermany et al., Mendeley Data, CC BY 4.0): children's
films from Guangzhou, in `<split>/<label>/` folders (`train/NORMAL`, `test/PNEUMONIA`...), as
the download unpacks: `chest_xray/` itself, or the folder holding the zip's nested
`chest_xray/`. A film's patient is in its file name."""

import os
import re

from .cli import UserError
from .collection import Collection, Film
from .images import list_images

# Kaggle's dataset is CC BY 4.0 as a whole; its DOI is where each image comes from.
KAGGLE_LICENSE = "CC BY 4.0"
KAGGLE_URL = "https://doi.org/10.17632/rscbjbr9sj.2"


def find_class_folder(kaggle, split, label):
    """`<kaggle>/<split>/<label>`, or the zip's nested `<kaggle>/chest_xray/<split>/<label>`."""
    if not os.path.isdir(kaggle):
        raise UserError(f"--kaggle {kaggle!r} is not a folder")
    for folder in (os.path.join(kaggle, split, label),
                   os.path.join(kaggle, "chest_xray", split, label)):
        if os.path.isdir(folder):
            return folder
    contents = sorted(name for name in os.listdir(kaggle)
                      if not name.startswith(".") and name != "__MACOSX")
    raise UserError(f"--kaggle {kaggle!r} has no {split}/{label} folder (nor "
                    f"chest_xray/{split}/{label}); it contains: "
                    f"{', '.join(contents) if contents else 'nothing'}")


def kaggle_patient(path):
    """The patient in a Kaggle file name: `person1102_bacteria_2957.jpeg` -> `person1102`,
    `IM-0033-0001.jpeg` -> `IM-0033`, `NORMAL2-IM-1427-0001.jpeg` -> `NORMAL2-IM-1427`.

    A name of another shape is its own patient.
    """
    name = os.path.basename(path)
    match = re.match(r"(person\d+)_|((?:NORMAL2-)?IM-\d+)-", name)
    return (match.group(1) or match.group(2)) if match else os.path.splitext(name)[0]


class KaggleChestXray(Collection):
    """The films of one class folder of one split (`folder`): each one's patient from its file
    name, the dataset's licence and DOI."""

    name = "kaggle"

    def __init__(self, kaggle, split="train", label="NORMAL"):
        self.folder = find_class_folder(kaggle, split, label)
        super().__init__(Film(path, label, kaggle_patient(path), self.name,
                              {"license": KAGGLE_LICENSE, "url": KAGGLE_URL})
                         for path in list_images(self.folder))
