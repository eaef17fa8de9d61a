"""What the two dataset builders share: their last step, copying the chosen images into a class
folder, recording them in the manifest and printing one summary line.

Only images are copied: a file whose content is not an image OpenCV decodes (checked from its
first bytes, then decoded), or that is over the pixel limit, is refused, counted and named,
whatever its name says. This is the guard against a crafted source tree (`images/evil.png`
linking to `~/.ssh/id_rsa`); links themselves are followed, so a source tree whose `images/`
is a link to another disk works.
"""

import contextlib
import hashlib
import os
import sys

from .cli import UserError, shown
from .images import NotAnImage, damage_warning, decode, read_bytes, with_decoder_messages
from .manifest import MANIFEST, read_manifest, update_manifest
from .progress import progress
from .writing import CONFLICT, COPIED, PRESENT, copy_new_file

REFUSED = "refused"


def _why_not_an_image(source):
    try:
        decode(read_bytes(source))
    except NotAnImage as err:
        return str(err)
    return None


def refusal(source):
    """Why `source` must not be copied into a dataset, or None when it is a usable image. A
    file whose decoder complained but that decodes is copied as it is, named in one warning."""
    [(reason, message)] = with_decoder_messages(_why_not_an_image, [source])
    if reason is None and message:
        print(damage_warning(source, message), file=sys.stderr)
    elif message:
        reason += f" (the decoder said: {message})"
    return reason


def file_sha256(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def copy_all(sources, output, copied_now):
    """Copy each source image into the folder `output` under its own name, never overwriting.

    Returns the count of each outcome (COPIED, PRESENT, REFUSED, CONFLICT) and the sources now
    in `output` (copied or already present); appends each file it creates to `copied_now` as it
    goes. Each refusal and conflict is reported on stderr.
    """
    counts, in_place = {COPIED: 0, PRESENT: 0, REFUSED: 0, CONFLICT: 0}, []
    with progress(len(sources), "copying") as bar:
        for source in sources:
            _copy_one(source, output, counts, in_place, copied_now)
            bar.update(1)
    return counts, in_place


def _copy_one(source, output, counts, in_place, copied_now):
    """copy_all's step for one source: refuse it, copy it, or find it there already."""
    reason = refusal(source)
    if reason is not None:
        counts[REFUSED] += 1
        print(f"[WARNING] refusing {shown(source)}: {reason}", file=sys.stderr)
        return
    destination = os.path.join(output, os.path.basename(source))
    outcome = copy_new_file(source, destination)
    if outcome == COPIED:
        copied_now.append(destination)
    counts[outcome] += 1
    if outcome == CONFLICT:
        print(f"[WARNING] not overwriting {shown(destination)}: a different file is already "
              f"there (wanted to copy {shown(source)})", file=sys.stderr)
    else:
        in_place.append(source)


def copy_into_output(sources, output, counts_before, counts_after=None, manifest_row=None,
                     source_name=""):
    """A builder's last step: create `output`, copy `sources` into it, print one summary line.

    `output` was checked by `check_output_folder` before the builder started. With
    `manifest_row` (source path -> {"patient_id", "license", "url"}), every image now in
    `output` gets a row in the manifest of the dataset folder above it (`mydata/manifest.csv`
    for `mydata/covid`). The summary is `counts_before`, what the copy did, `counts_after`
    (with the refusals added to its own), then the conflicts. Conflicts (files never
    overwritten) make it fail once everything else is copied.
    """
    dataset = os.path.dirname(os.path.abspath(output))
    if manifest_row is not None:
        read_manifest(dataset)  # a manifest that cannot be read stops the run before any copy
    try:
        os.makedirs(output, exist_ok=True)
    except OSError as err:
        raise UserError(f"--output {output!r} cannot be created: {err.strerror}") from None
    copied_now = []
    try:
        copied, in_place = copy_all(sources, output, copied_now)
        if manifest_row is not None:
            label = os.path.basename(os.path.abspath(output))
            total = update_manifest(dataset, [
                {"file": f"{label}/{os.path.basename(source)}", "class": label,
                 "source": source_name, "sha256": file_sha256(source), **manifest_row(source)}
                for source in in_place])
            print(f"[INFO] {shown(os.path.join(os.path.dirname(output), MANIFEST))}: "
                  f"{len(in_place)} row(s) for {label}/, {total} in all")
    except BaseException:
        # A full disk, Ctrl-C or SIGTERM before the manifest is written: the folder and its
        # manifest must agree, so the files this run copied go (those already there stay).
        for path in copied_now:
            with contextlib.suppress(OSError):
                os.remove(path)
        raise
    after = dict(counts_after or {})
    after[REFUSED] = after.get(REFUSED, 0) + copied[REFUSED]
    summary = {**counts_before, COPIED: copied[COPIED], PRESENT: copied[PRESENT], **after,
               CONFLICT: copied[CONFLICT]}
    print("[INFO] " + ", ".join(f"{key}: {value}" for key, value in summary.items()))
    if copied[CONFLICT]:
        raise UserError(f"{copied[CONFLICT]} file(s) in {output!r} have the names of "
                        "selected images but other contents; they were not overwritten")
