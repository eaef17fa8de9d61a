"""Where the audit finds the lungs: each image's own lung mask where the dataset ships one for
every image (the COVID-19 Radiography Database's `masks/`), else a fixed box over the lung
fields. A mask that cannot be read, or of another shape than its image, is refused for that
image alone: the box, drawn as a mask, stands in for it.
"""

import dataclasses
import os
import sys
import tempfile

import numpy as np

from .cli import shown
from .images import IMAGE_SIZE, NotAnImage, read_bytes, read_header, save_image
from .layout import find_dataset
from .store import ImageStore
from .transforms import BoxMask, LungMasks

# The box over the lung fields of a PA chest film, as fractions of the image's width and height
# (left, top, right, bottom): on the 224x224 image, pixels 22 to 201 both ways, leaving a margin
# of 22 pixels (a tenth) on every side, where the shoulders, the film's edges, labels and
# markers are.
LUNG_BOX = (0.1, 0.1, 0.9, 0.9)
# Refused lung masks named, at most; the rest counted.
SHOWN_MASKS = 5
# A mask's aspect ratio may differ from its image's by this fraction (rounding in a resize).
SHAPE_TOLERANCE = 0.02
def lung_box(keep="inside"):
    """LUNG_BOX as a mask (`transforms.BoxMask`), keeping the box or all but it; read when the
    audit runs."""
    return BoxMask(box=tuple(LUNG_BOX), keep=keep)


@dataclasses.dataclass(frozen=True)
class Lungs:
    """Where the audit finds the lungs (`find_lungs`): each image's own mask, or LUNG_BOX."""

    hidden: object  # the transform of lungs_hidden
    only: object  # the transform of lungs_only
    about: str  # what the report says of it
    masks: dict  # {image path: its mask's path} when the masks are used, else {}
    store: object = None  # the decoded masks (an `ImageStore`), when used

    def close(self):
        if self.store is not None:
            self.store.close()


def box_lungs():
    """The lungs as LUNG_BOX, on every image."""
    return Lungs(lung_box(keep="outside"), lung_box(keep="inside"),
                 f"the fixed box {list(LUNG_BOX)} (fractions: left, top, right, bottom)", {})


def find_lungs(dataset, images, paths, external_set=None):
    """The lungs of every image: where the dataset folder (and the external set's) ship a lung
    mask for every image, as the COVID-19 Radiography Database does, those masks; else the
    fixed box."""
    masks = dict(find_dataset(dataset).masks)
    stores = [(images, paths)]
    if external_set is not None:
        masks.update(find_dataset(external_set.folder, "--external").masks)
        stores.append((external_set.store, external_set.paths))
    everything = [path for _, some in stores for path in some]
    if not masks or not all(path in masks for path in everything):
        if masks:
            print(f"[WARNING] lung masks ship with {len(masks)} of {len(everything)} images: "
                  "the audit uses the fixed box for all", file=sys.stderr)
        return box_lungs()
    refused = refused_masks(masks, everything, stores)
    with tempfile.TemporaryDirectory() as folder:
        # an image whose mask is refused is masked by the fixed box, drawn as a mask of its own
        box = box_mask_file(folder)
        mask_store = ImageStore(list(dict.fromkeys(
            [masks[path] for path in everything if path not in refused] + [box])))
    skipped = {path: reason for path, reason, _ in mask_store.skipped}
    refused.update({path: f"cannot be read ({skipped[masks[path]]})" for path in everything
                    if masks[path] in skipped})
    warn_refused(masks, refused)
    mask_path = {path: box if path in refused else masks[path] for path in everything}
    digests = [store.digest(path) for store, some in stores for path in some]
    slots = mask_store.slots([mask_path[path] for path in everything])
    slot_of = dict(zip(digests, slots.tolist()))
    mask_of = {digest: mask_store.digest(mask_path[path])
               for digest, path in zip(digests, everything)}
    used = len(everything) - len(refused)
    print(f"[INFO] lungs: the {used} lung masks that ship with the images"
          + (f", the fixed box for {len(refused)} whose mask was refused" if refused else ""))
    about = f"each image's own lung mask ({used} from masks/)" + (
        f"; the fixed box {list(LUNG_BOX)} for {len(refused)} whose mask was refused"
        if refused else "")
    return Lungs(LungMasks("outside", mask_store, slot_of, mask_of),
                 LungMasks("inside", mask_store, slot_of, mask_of),
                 about, {path: masks[path] for path in everything if path not in refused},
                 mask_store)


def refused_masks(masks, everything, stores):
    """{image path: why its mask is refused}, from the files' headers: a mask that cannot be
    read, or of another shape (aspect ratio) than its image: stretched to it, it would hide the
    wrong part."""
    header_of = {path: store.header(path) for store, some in stores for path in some}
    refused = {}
    for path in everything:
        try:
            mask = read_header(read_bytes(masks[path]))
        except NotAnImage as err:
            refused[path] = f"cannot be read ({err})"
            continue
        image = header_of[path]
        # the Radiography Database's masks are 256x256 for 299x299 films: a mask scaled
        # evenly is the image's; one of another shape would be stretched onto it
        if abs(mask.width * image.height - image.width * mask.height) > (
                SHAPE_TOLERANCE * image.width * mask.height):
            refused[path] = (f"{mask.width}x{mask.height}, another shape than its image "
                             f"({image.width}x{image.height})")
    return refused


def warn_refused(masks, refused):
    """Each refused mask named on stderr, at most SHOWN_MASKS of them, then how many more."""
    for path, why in list(refused.items())[:SHOWN_MASKS]:
        print(f"[WARNING] lung mask {shown(masks[path])} refused: {why}; the fixed box is used "
              "for its image", file=sys.stderr)
    if len(refused) > SHOWN_MASKS:
        print(f"[WARNING] and {len(refused) - SHOWN_MASKS} more lung mask(s) refused",
              file=sys.stderr)


def box_mask_file(folder):
    """LUNG_BOX drawn as a 224x224 mask (white inside) in `folder`: what `LungMasks` reads for
    an image whose own mask is refused, the same pixels `BoxMask` keeps."""
    top, bottom, left, right = lung_box().pixels()
    mask = np.zeros((*IMAGE_SIZE, 3), np.uint8)
    mask[top:bottom, left:right] = 255
    path = os.path.join(folder, "lung-box.png")
    save_image(path, mask)
    return path
