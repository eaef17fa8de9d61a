"""The model file: everything this project writes into it and reads back, in one place.

A model file is Keras's: HDF5 (`.h5`, the tutorial's format) or Keras's own zip (`.keras`),
chosen by its name as Keras chooses. Beside the network, this project keeps in it:

- the class names, in the order of the outputs (JSON text);
- the input check (`input_check`): the training images' descriptions and its thresholds;
- a recalibration, once `recalibrate_covid19.py` has fitted one (`calibration`).

In HDF5 each text is a fixed-length attribute of the root (the check: a group holding its array
and its metadata); in a `.keras` zip, each is a member. Keras reads none of them, so plain Keras
loads the file as it is, with the network's own probabilities.

One policy bounds every read: a text holds at most MAX_TEXT_BYTES and the check at most
MAX_ARRAY_BYTES, each sized before a byte of it is read (a zip member by its stated size, an
HDF5 attribute by its stored length: `h5attributes` reads a variable-length one's from the
object header); a zip member of ours that stands twice is refused (the last copy would win,
unseen); an HDF5 link that leads out of the file, or an array stored outside it, is refused
unfollowed. Whatever h5py raises for a damaged file is one line. Nothing else in the package
opens a model file.
"""

import dataclasses
import io
import json
import logging
import os
import zipfile

import h5py
import numpy as np

from .calibration import Recalibration
from .cli import UserError, first_line, lazy_import
from .h5attributes import read_text_attribute
from .images import IMAGE_SIZE
from .input_check import from_stored, metadata_text, not_ours
from .writing import file_kind

keras = lazy_import("keras")

# The model files train_covid19.py writes: HDF5 as the tutorial, or Keras's own format.
MODEL_SUFFIXES = (".h5", ".keras")
# Where each part is kept: an HDF5 attribute (the check: a group) or a member of the .keras zip.
CLASS_NAMES_ATTR, CLASS_NAMES_MEMBER = "covid19_class_names", "covid19_class_names.json"
INPUT_CHECK_GROUP, INPUT_CHECK_MEMBER = "covid19_input_check", "covid19_input_check.npz"
RECALIBRATION_ATTR, RECALIBRATION_MEMBER = ("covid19_recalibration",
                                            "covid19_recalibration.json")
# Far above anything this project writes: a text (a few hundred bytes), the check (at most
# 1,000 training images' descriptions, about 20 MB). Larger is not ours, and is never read.
MAX_TEXT_BYTES = 64 * 1024
MAX_ARRAY_BYTES = 64 * 1024 * 1024
# The whole file, before Keras reads it (its own `model_config` and weights, which nothing else
# bounds): train_covid19.py's models are 60 MB, with the check at most 80.
MAX_MODEL_FILE_BYTES = 1 << 30
# What each array of the input check's member may be: its dtype kinds and dimensions.
NPY_ARRAYS = {"reference.npy": ("f", 2), "metadata.npy": ("u", 1)}
# What h5py raises for a damaged file, besides OSError: a bad version number or checksum in a
# header ends as RuntimeError or KeyError, a damaged datatype as TypeError.
H5PY_ERRORS = (OSError, RuntimeError, KeyError, TypeError)


class Unreadable(ValueError):
    """A part of the model file is damaged, too large or not this project's: the reason."""


def is_keras_file(path):
    return path.lower().endswith(".keras")


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def _add_member(path, member, data):
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(member, data)


def write_text(path, attribute, member, text):
    """Add `text` to the model file at `path`: the root's attribute `attribute` (fixed length:
    its stored size bounds it before it is read) or the .keras zip's `member`."""
    if is_keras_file(path):
        _add_member(path, member, text)
        return
    with h5py.File(path, "a") as f:
        f.attrs[attribute] = np.bytes_(text.encode())


def write_input_check(path, metadata, reference):
    """Add the input check (its `metadata` text and `reference` array) to the model file."""
    if is_keras_file(path):
        buffer = io.BytesIO()
        np.savez(buffer, reference=reference,
                 metadata=np.frombuffer(metadata.encode(), np.uint8))
        _add_member(path, INPUT_CHECK_MEMBER, buffer.getvalue())
        return
    with h5py.File(path, "a") as f:
        group = f.create_group(INPUT_CHECK_GROUP)
        group.create_dataset("reference", data=reference)
        group.attrs["metadata"] = np.bytes_(metadata.encode())


def save_model(model, path, class_names, input_check=None):
    """Save the whole model with its class names and its input check (an
    `input_check.InputCheck`, or None): predict_covid19.py reads both back, so it never has
    to guess which output is which class, and the file is all it needs to check its inputs."""
    if is_keras_file(path):
        model.save(path)
    else:
        # HDF5 is the tutorial's format; Keras 3 logs a warning calling it legacy on every save
        absl_logger = logging.getLogger("absl")
        level = absl_logger.level
        absl_logger.setLevel(logging.ERROR)
        try:
            model.save(path)
        finally:
            absl_logger.setLevel(level)
    write_text(path, CLASS_NAMES_ATTR, CLASS_NAMES_MEMBER, json.dumps(class_names))
    if input_check is not None:
        write_input_check(path, metadata_text(input_check), input_check.reference)


def store_recalibration(path, recalibration):
    """Add `recalibration` (a `calibration.Recalibration`) to the model file at `path`."""
    write_text(path, RECALIBRATION_ATTR, RECALIBRATION_MEMBER, recalibration.to_json())


# ---------------------------------------------------------------------------------------------
# Reading, bounded
# ---------------------------------------------------------------------------------------------


def _damaged(path, err):
    return UserError(f"cannot read {path!r}: damaged HDF5 ({first_line(err)[:200]})")


def _keras_member(archive, member, max_bytes):
    """The bytes of our `member` of the open zip, or None without it."""
    names = archive.namelist()
    if member not in names:
        return None
    if names.count(member) > 1:  # the last copy would win, unseen
        raise Unreadable(f"{member} stands {names.count(member)} times")
    info = archive.getinfo(member)
    if info.file_size > max_bytes:
        raise Unreadable(f"{member} holds {info.file_size} bytes, more than {max_bytes}")
    with archive.open(info) as stream:
        data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise Unreadable(f"{member} holds more than {max_bytes} bytes")
    return data


def _open_keras(path):
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError):
        raise UserError(f"--model {path!r} is not a Keras model file (.keras) saved by "
                        "train_covid19.py") from None


def _open_h5(path):
    try:
        return h5py.File(path, "r")
    except OSError:  # what else h5py raises, its callers say is damage (H5PY_ERRORS)
        raise UserError(f"--model {path!r} is not an HDF5 model file (.h5) saved by "
                        "train_covid19.py") from None


def read_text(path, attribute, member):
    """The text kept as `attribute` (HDF5) or `member` (.keras) in the model file at `path`, or
    None without it; `Unreadable` when it is too large or not text."""
    try:
        if is_keras_file(path):
            with _open_keras(path) as archive:
                data = _keras_member(archive, member, MAX_TEXT_BYTES)
            return None if data is None else data.decode("utf-8")
        with _open_h5(path) as f:
            return read_text_attribute(f, attribute, MAX_TEXT_BYTES)
    except UnicodeDecodeError as err:
        raise Unreadable(f"not UTF-8 text ({err.reason})") from None
    except (zipfile.BadZipFile, EOFError, ValueError) as err:  # Unreadable among them
        raise Unreadable(str(err)[:200]) from None
    except H5PY_ERRORS as err:
        raise _damaged(path, err) from None


def _bounded_npy(archive, name):
    """The array `name` of the npz `archive`, read as `np.load` would but bounded by what its
    header says before a byte of data is inflated: a float (or uint8) array of the expected
    dimensions, at most MAX_ARRAY_BYTES, and no more data than its shape holds."""
    from numpy.lib import format as npy

    kinds, ndim = NPY_ARRAYS[name]
    with archive.open(name) as stream:
        version = npy.read_magic(stream)
        read_header = {(1, 0): npy.read_array_header_1_0,
                       (2, 0): npy.read_array_header_2_0}.get(version)
        if read_header is None:
            raise Unreadable(f"npy version {version}")
        shape, fortran, dtype = read_header(stream)
        if (dtype.kind not in kinds or dtype.itemsize > 8 or dtype.hasobject
                or len(shape) != ndim):
            raise Unreadable(f"{name} is {dtype} of shape {shape}")
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if size > MAX_ARRAY_BYTES:
            raise Unreadable(f"{name} says it holds {size} bytes")
        data = stream.read(size + 1)
    if len(data) != size:
        raise Unreadable(f"{name} holds {len(data)} bytes, not {size}")
    return np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C")


def _hard_link(group, name):
    """`group[name]` when it is an object of this file (a hard link), None without it: an
    external link (another file, or a FIFO that would hang the run) or a soft link, which
    Keras refuses in its own weights, is refused here too, unfollowed."""
    link = group.get(name, getlink=True)
    if link is None:
        return None
    if not isinstance(link, h5py.HardLink):
        raise Unreadable(f"{name} is {type(link).__name__}, not an object of the file")
    return group[name]


def _input_check_in_h5(f):
    group = _hard_link(f, INPUT_CHECK_GROUP)
    if group is None:
        return None
    if not isinstance(group, h5py.Group):
        raise Unreadable(f"{INPUT_CHECK_GROUP} is not a group")
    dataset = _hard_link(group, "reference")
    if not isinstance(dataset, h5py.Dataset):
        raise Unreadable("no reference dataset")
    if dataset.external:  # its data in another file (or a FIFO): never read
        raise Unreadable("the reference is stored outside the file")
    if (dataset.dtype.kind != "f" or dataset.dtype.itemsize > 8 or dataset.ndim != 2
            or dataset.size * dataset.dtype.itemsize > MAX_ARRAY_BYTES):
        raise Unreadable(f"the reference is {dataset.dtype} of shape {dataset.shape}")
    metadata = read_text_attribute(group, "metadata", MAX_TEXT_BYTES)
    if metadata is None:
        raise Unreadable("no metadata")
    return metadata, dataset[()]


def _input_check_in_keras(archive):
    data = _keras_member(archive, INPUT_CHECK_MEMBER, MAX_ARRAY_BYTES)
    if data is None:
        return None
    with zipfile.ZipFile(io.BytesIO(data)) as stored:
        if sorted(stored.namelist()) != sorted(NPY_ARRAYS):
            raise Unreadable(f"it holds {stored.namelist()}")
        reference = _bounded_npy(stored, "reference.npy")
        metadata = _bounded_npy(stored, "metadata.npy")
    return metadata.tobytes().decode("utf-8"), reference


def read_input_check_parts(path):
    """(metadata text, reference array) of the input check in the model file at `path`, or None
    without one; `Unreadable` with the reason when it is damaged or not ours."""
    where = (f"member {INPUT_CHECK_MEMBER}" if is_keras_file(path)
             else f"group {INPUT_CHECK_GROUP}")
    try:
        if is_keras_file(path):
            with _open_keras(path) as archive:
                return _input_check_in_keras(archive)
        with _open_h5(path) as f:
            return _input_check_in_h5(f)
    except (zipfile.BadZipFile, EOFError, ValueError) as err:  # Unreadable among them
        raise Unreadable(f"{where}: {str(err)[:200]}") from None
    except H5PY_ERRORS as err:
        raise _damaged(path, err) from None


# ---------------------------------------------------------------------------------------------
# The parts, as the scripts use them
# ---------------------------------------------------------------------------------------------


def read_input_check(path):
    """The `InputCheck` saved in the model file at `path`, or None when it has none (a model
    trained before the check existed); a damaged one is a `UserError`."""
    try:
        parts = read_input_check_parts(path)
    except Unreadable as err:
        raise not_ours(path, str(err)) from None
    return None if parts is None else from_stored(path, parts[0], np.asarray(parts[1]))


def read_recalibration(path):
    """The `Recalibration` the model file at `path` carries, or None; a damaged one is a
    `UserError`."""
    try:
        text = read_text(path, RECALIBRATION_ATTR, RECALIBRATION_MEMBER)
        if text is None:
            return None
        recalibration = Recalibration.from_json(text)
        numbers = [recalibration.intercept, recalibration.slope, recalibration.temperature,
                   *recalibration.offsets]
        if not all(np.isfinite(numbers)) or recalibration.temperature <= 0:
            raise ValueError("not finite")
        return recalibration
    except (ValueError, TypeError, KeyError) as err:
        raise UserError(f"--model {path!r}: its recalibration is damaged ({err}); use the file "
                        "recalibrate_covid19.py wrote, or the model before it") from None


def read_class_names(path):
    """The class names the model file at `path` carries, in the order of its outputs."""
    where = CLASS_NAMES_MEMBER if is_keras_file(path) else CLASS_NAMES_ATTR
    try:
        stored = read_text(path, CLASS_NAMES_ATTR, CLASS_NAMES_MEMBER)
    except Unreadable as err:
        raise UserError(f"--model {path!r}: its class names ({where}) cannot be read ({err}); "
                        "use a model saved by train_covid19.py") from None
    if stored is None:
        raise UserError(f"--model {path!r} has no class names, so its outputs cannot be named; "
                        "use a model saved by this train_covid19.py (retrain if it is older)")
    try:
        class_names = json.loads(stored)
    except (ValueError, TypeError):
        class_names = None
    if not (isinstance(class_names, list) and class_names
            and all(isinstance(name, str) for name in class_names)):
        raise UserError(f"--model {path!r}: its class names ({where}) are not a JSON list of "
                        "names; use a model saved by this train_covid19.py")
    return class_names


def _not_a_file(path):
    """What `path` is when it is not a regular file, or None when nothing is there."""
    try:
        kind = file_kind(os.stat(path).st_mode)
    except OSError:
        return "a link to nothing" if os.path.islink(path) else None
    if os.path.islink(path):
        kind = f"a link to {kind} ({os.path.realpath(path)})"
    return kind


def load_classifier(path):
    """The Keras model at `path` (HDF5 or .keras) and its class names, in the order of its
    outputs; a model that does not take the tutorial's 224x224 RGB images is refused."""
    if not os.path.isfile(path):
        kind = _not_a_file(path)
        if kind is not None:
            raise UserError(f"--model {path!r} is {kind}, not a model file; give the file "
                            "train_covid19.py saved")
        raise UserError(f"--model {path!r}: no such file; train one with train_covid19.py")
    if not path.lower().endswith((".h5", ".hdf5", ".keras")):
        # Keras picks its loader from the name: a model must be named as its format, so that
        # no other loader ever reads the file (a file can parse as a zip and as HDF5 at once)
        raise UserError(f"--model {path!r} must be a model file named .h5, .hdf5 or .keras, as "
                        "train_covid19.py saves it")
    size = os.stat(path).st_size
    if size > MAX_MODEL_FILE_BYTES:
        raise UserError(f"--model {path!r} is {size / 2**30:.1f} GiB, over the limit of "
                        f"{MAX_MODEL_FILE_BYTES >> 30} GiB: not a model train_covid19.py saved "
                        "(about 60 MB)")
    class_names = read_class_names(path)
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as err:  # Keras raises many types for a damaged or foreign file
        raise UserError(f"--model {path!r} cannot be loaded as a Keras model: "
                        f"{first_line(err)}") from None
    if model.output_shape[-1] != len(class_names):
        raise UserError(f"--model {path!r} has {model.output_shape[-1]} outputs but "
                        f"{len(class_names)} class names ({', '.join(class_names)}); it was not "
                        "saved by train_covid19.py as it is")
    expected = (*IMAGE_SIZE, 3)
    if (len(model.inputs) != 1 or not isinstance(model.input_shape, tuple)
            or tuple(model.input_shape[1:]) != expected):
        raise UserError(f"--model {path!r} takes inputs of shape {model.input_shape}, not the "
                        f"{expected[0]}x{expected[1]} RGB images (None, {expected[0]}, "
                        f"{expected[1]}, 3) that train_covid19.py's models take")
    return model, class_names


@dataclasses.dataclass(frozen=True)
class ModelFile:
    """What a model file holds (`read_model_file`)."""

    model: object  # the network, float32 as saved
    class_names: list
    input_check: object  # its `input_check.InputCheck`, or None for a model trained before it
    recalibration: object = None  # its `calibration.Recalibration`, or None


def read_model_file(path):
    """Everything the model file at `path` holds: a `ModelFile`. A recalibration that does not
    fit the model's classes is refused."""
    model, class_names = load_classifier(path)
    input_check = read_input_check(path)
    recalibration = read_recalibration(path)
    if recalibration is not None:
        fits = (len(recalibration.offsets) == len(class_names) if recalibration.offsets
                else len(class_names) == 2 and recalibration.positive in (0, 1))
        if not fits:
            raise UserError(f"--model {path!r}: its recalibration does not fit its "
                            f"{len(class_names)} classes; use the file recalibrate_covid19.py "
                            "wrote")
    return ModelFile(model, class_names, input_check, recalibration)
