"""The checks of every path a script reads or writes, made before VGG16 or any image loads:
every problem one line in seconds, not a traceback after minutes of work.

- Outputs: `check_output_path`, `check_output_folder`, `check_new_folder`: each can be
  written, and none lands inside the source data (`check_not_inside_input_folders`: source data is
  never modified, and an output there would be read as data next time).
- Inputs, beside them: the feature cache's folder is usable and outside the input folders, the
  temporary folder has room for the decoded images, and the manifests can be read.
- `check_paths`: all of a run's, for train_covid19.py and audit_covid19.py (`outputs` then
  writes them).
- `read_regular`: a small input (a report, a label file) read whole with a bound, and only
  when it is a regular file: a FIFO named as one would block the run.
"""

import os
import stat

from .cli import UserError, shown
from .images import list_images
from .manifest import read_manifest
from .store import check_room_for_decoded

# The model files' endings, which Keras compares case by case.
MODEL_FILE_SUFFIXES = {".h5", ".hdf5", ".keras"}


def check_paths(input_folders, outputs, cache_dir=None):
    """Every path of a run that trains heads (train_covid19.py, audit_covid19.py), checked:
    `inputs` [(flag, folder)], `outputs` [(path, flag, suffix)] and the cache folder (None with
    --no-cache). Returns the outputs' paths."""
    paths = check_outputs(input_folders, outputs)
    check_input_folders(input_folders, cache_dir)
    return paths


def check_outputs(input_folders, outputs):
    """Fail now, not after training, if an output cannot be written, would land inside one of
    the input folders `inputs` ([(flag, folder)]: source data is never modified), or two
    outputs are one file. `outputs` is [(path, flag, suffix)]; returns their paths."""
    for path, flag, suffix in outputs:
        check_output_path(path, flag, suffix=suffix)
        check_not_inside_input_folders(path, flag, input_folders)
    paths = [path for path, _, _ in outputs]
    if len({os.path.abspath(path) for path in paths}) < len(paths):
        raise UserError(f"{', '.join(shown(path) for path in paths)} must be {len(paths)} "
                        "different files")
    return paths


def check_input_folders(input_folders, cache_dir=None):
    """Before VGG16 or any image loads: the cache folder is usable and lies outside the input
    folders `inputs` ([(flag, folder)]), the temporary folder has room for their decoded
    images, and their manifests can be read (each problem one line, in seconds rather than
    after minutes of work)."""
    if cache_dir is not None:
        check_not_inside_input_folders(cache_dir, "--cache-dir", input_folders)
        check_cache_folder(cache_dir)
    existing = [folder for _, folder in input_folders if os.path.isdir(folder)]
    check_room_for_decoded(sum(len(list_images(folder)) for folder in existing))
    for folder in existing:
        read_manifest(folder)


def check_cache_folder(folder):
    """A `UserError` unless `folder` (--cache-dir) is a folder, or can be created as one."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UserError(f"--cache-dir {folder!r} is not a folder; give a folder for the "
                        "feature cache, or delete that file")
    existing = os.path.abspath(folder)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--cache-dir {folder!r}: folder {existing!r} is not writable; give "
                        "another --cache-dir")


def same_or_inside(path, folder):
    """True when `path` is `folder` or lies inside it, after resolving links."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder + os.sep)


def check_not_inside_input_folders(path, flag, input_folders):
    """A `UserError` if `path` is, or lies inside, one of `inputs` ([(flag, folder)]): source
    data is never modified, and an output written there would be read as data next time."""
    for input_flag, folder in input_folders:
        if os.path.isdir(folder) and same_or_inside(path, folder):
            raise UserError(f"{flag} {path!r} is inside {input_flag} {folder!r}; write "
                            "outputs elsewhere, source data is never modified")


def check_output_path(path, flag, suffix=None):
    """Fail now, not after training, if `path` cannot be written as an output file. `suffix`:
    the ending it must have, or a tuple of the endings it may have."""
    suffixes = (suffix,) if isinstance(suffix, str) else suffix
    if suffixes and set(suffixes) & MODEL_FILE_SUFFIXES:
        # Keras picks its format from the name's ending, in lower case: `M.KERAS` would pass a
        # check that ignored case, train for minutes, then fail to save
        if not path.endswith(suffixes):
            raise UserError(f"{flag} {path!r} must end in {' or '.join(suffixes)}, in lower "
                            "case, as Keras reads the name")
    elif suffixes and not path.lower().endswith(suffixes):
        raise UserError(f"{flag} {path!r} must end in {' or '.join(suffixes)}")
    _check_parent(path, flag)
    if os.path.isdir(path):
        raise UserError(f"{flag} {path!r} is a folder; give a file name")


def check_new_folder(path, flag):
    """Fail now if `path` cannot be written as a new folder: one that exists already is never
    written over or into."""
    if os.path.lexists(path):
        raise UserError(f"{flag} {path!r} exists; give a new folder's name (nothing is written "
                        "over an existing one)")
    _check_parent(path, flag)


def _check_parent(path, flag):
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UserError(f"{flag} {path!r}: folder {folder!r} does not exist; create it first")
    if not os.access(folder, os.W_OK):
        raise UserError(f"{flag} {path!r}: folder {folder!r} is not writable")


def check_output_folder(folder, flag, source=None, source_flag=None):
    """Fail before any work if `folder` cannot be an output folder; creates nothing.

    Refuses a file, a folder inside `source` if given or one that contains it (source data is
    never modified), and a folder that cannot be created or written.
    """
    if source is not None and same_or_inside(folder, source):
        raise UserError(f"{flag} {folder!r} is inside {source_flag} {source!r}; write the "
                        "dataset elsewhere, source data is never modified")
    if source is not None and same_or_inside(source, folder):
        raise UserError(f"{flag} {folder!r} contains {source_flag} {source!r}; write the "
                        "dataset beside it, source data is never modified")
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UserError(f"{flag} {folder!r} is a file, not a folder")
    existing = os.path.abspath(folder)  # the folder, or the nearest parent that exists
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UserError(f"{flag} {folder!r} cannot be created: {existing!r} is a file")
    if not os.access(existing, os.W_OK):
        raise UserError(f"{flag} {folder!r} is not writable" if existing == os.path.abspath(folder)
                        else f"{flag} {folder!r} cannot be created: {existing!r} is not writable")


def read_regular(path, max_bytes):
    """(the bytes of the regular file at `path`, None) when it holds at most `max_bytes`, or
    (None, why it cannot be read: not there, not a regular file, larger). Read with the bound
    (at most `max_bytes` + 1), opened without blocking and checked from the open descriptor:
    the file checked is the file read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as err:
        return None, f"cannot be read ({err.strerror or err})"
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # before fdopen, which refuses a folder
        os.close(fd)
        return None, "is not a regular file (a FIFO, device, socket or folder)"
    with os.fdopen(fd, "rb") as f:
        try:
            data = f.read(max_bytes + 1)
        except OSError as err:
            return None, f"cannot be read ({err.strerror or err})"
    if len(data) > max_bytes:
        return None, f"is larger than {max_bytes / 2**20:g} MiB"
    return data, None
