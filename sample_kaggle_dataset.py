"""Sample healthy chest X-rays from Kaggle's Chest X-Ray Images (Pneumonia) dataset.

The tutorial's second dataset builder, fixed. The tutorial listed images from the whole Kaggle
tree, so 18 of its 25 "normal" images were pneumonia cases; this script samples only from
`<kaggle>/train/NORMAL` (or the `--split`/`--label` folder you choose). The sample is the same on
every machine: the paths are sorted before a seeded shuffle, where the tutorial shuffled an
`os.walk` listing whose order differs between filesystems.

Usage:
    python sample_kaggle_dataset.py --kaggle chest_xray --output mydata/normal
    python sample_kaggle_dataset.py -k chest_xray -o mydata/normal --sample 25 --seed 42
    python sample_kaggle_dataset.py -k chest_xray -o mydata/pneumonia --label PNEUMONIA

`--kaggle` is the unpacked download: `chest_xray/` itself, or the folder holding the zip's
nested `chest_xray/`. Only files whose content is an image are copied (covid19xray.building). Reruns
are safe and never overwrite a different file. Each image's patient
(from its file name), licence (CC BY 4.0) and source (the dataset's DOI) go into `manifest.csv`
beside the output folder (`mydata/manifest.csv`).
"""

import dataclasses
import random
import sys

from covid19xray.building import copy_into_output
from covid19xray.cli import ArgumentParser, UserError, cli, positive, shown
from covid19xray.config import Config, add_flags, flag, seed_flag
from covid19xray.kaggle import KaggleChestXray
from covid19xray.preflight import check_output_folder
from covid19xray.writing import claim_outputs


@dataclasses.dataclass(frozen=True, kw_only=True)
class KaggleConfig(Config):
    """What the sampler is told, built once from the flags (`parse_args`)."""

    kaggle: str = flag(short="-k", help="path to the unpacked Kaggle dataset (chest_xray/)")
    # Required, as in the tutorial: a default of dataset/normal would add images to the shipped
    # dataset instead of building a new one.
    output: str = flag(short="-o", help=(
        "folder to copy the sampled images into, created if missing, for example mydata/normal"))
    sample: int = flag(25, short="-s", type=positive(int), help="number of images to sample")
    kaggle_split: str = flag("train", option="--split", choices=["train", "val", "test"],
                             help="Kaggle split to sample from")
    label: str = flag("NORMAL", choices=["NORMAL", "PNEUMONIA"], help=(
        "Kaggle class folder to sample from"))
    seed: int = seed_flag("the sample")


def parse_args(argv=None):
    """The sampler's flags, as a `KaggleConfig`."""
    ap = ArgumentParser(
        description="Sample healthy X-rays from Kaggle's Chest X-Ray Images (Pneumonia).",
    )
    add_flags(ap, KaggleConfig)
    return KaggleConfig.from_flags(ap.parse_args(argv))


def sample_images(images, size, seed):
    """The first `size` images after a seeded shuffle of the sorted list: the same everywhere."""
    shuffled = sorted(images)
    random.Random(seed).shuffle(shuffled)
    return shuffled[:size]


@cli
def main(argv=None) -> int:
    config = parse_args(argv)
    kaggle = KaggleChestXray(config.kaggle, config.kaggle_split, config.label)
    folder = kaggle.folder
    check_output_folder(config.output, "--output", config.kaggle, "--kaggle")
    images = kaggle.paths
    if not images:
        raise UserError(f"{folder!r} has no images")
    chosen = sample_images(images, config.sample, config.seed)
    if len(images) < config.sample:
        print(f"[INFO] {shown(folder)} has only {len(images)} images, fewer than --sample "
              f"{config.sample}: copying all of them")
    else:
        print(f"[INFO] sampled {len(chosen)} of {len(images)} images in {shown(folder)} "
              f"(seed {config.seed})")

    with claim_outputs(config.output):  # a second sample into the same folder stops here
        copy_into_output(chosen, config.output,
                         {"images found": len(images), "sampled": len(chosen)},
                         manifest_row=kaggle.manifest_cells, source_name=kaggle.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
