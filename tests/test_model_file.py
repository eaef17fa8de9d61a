"""covid19xray/model_file.py (and h5attributes.py): what a model file carries, each part read
with a bound; a damaged or hostile model file, .h5 or .keras, is one line from every reader and
every script that reads one, never a traceback."""

import io
import json
import os
import random
import zipfile

import numpy as np
import pytest

import predict_covid19
import recalibrate_covid19
from covid19xray.model_file import read_input_check, save_model
from helpers import ROOT, assert_one_line_error, run_main, small_dataset, write_image


def mutants(data, where, count, seed):
    """`count` copies of `data` with 1-3 bytes changed near the offsets `where`."""
    rng = random.Random(seed)
    for _ in range(count):
        mutant = bytearray(data)
        base = rng.choice(where)
        for _ in range(rng.randint(1, 3)):
            mutant[min(len(data) - 1, max(0, base + rng.randint(-600, 600)))] = rng.randrange(256)
        yield bytes(mutant)


def keras_copy(trained, path):
    import keras

    model = keras.models.load_model(trained["model"], compile=False)
    save_model(model, str(path), ["covid", "normal"], read_input_check(trained["model"]))
    return path


@pytest.mark.slow(seconds=8)
@pytest.mark.parametrize("suffix", [".h5", ".keras"])
def test_a_damaged_model_is_one_line_in_predict_and_recalibrate(trained, tmp_path, suffix):
    """Seeded byte changes in the headers (HDF5's object headers, for .keras the HDF5 weights
    file inside the zip): predict and recalibrate end in one line, or run; never a traceback."""
    image = small_dataset(tmp_path / "site", {"covid": 5, "normal": 5}, size=(40, 36))
    if suffix == ".h5":
        data = open(trained["model"], "rb").read()
        where = [data.find(name) for name in (b"covid19_class_names", b"model_config",
                                              b"covid19_input_check", b"TREE")]
    else:
        original = keras_copy(trained, tmp_path / "m.keras")
        with zipfile.ZipFile(original) as archive:
            members = {name: archive.read(name) for name in archive.namelist()}
        weights = members["model.weights.h5"]
        where = [weights.find(b"TREE"), weights.find(b"vars"), 64]
    outcomes = {"refused": 0, "ran": 0}
    for n, mutant in enumerate(mutants(data if suffix == ".h5" else weights, where, 6, seed=1)):
        path = tmp_path / f"m{n}{suffix}"
        if suffix == ".h5":
            path.write_bytes(mutant)
        else:
            with zipfile.ZipFile(path, "w") as archive:
                for name, content in members.items():
                    archive.writestr(name, mutant if name == "model.weights.h5" else content)
        for main, argv in [
                (predict_covid19.main, ["--model", str(path), image, "--classify-rejected"]),
                (recalibrate_covid19.main, ["--model", str(path), "--labelled", image,
                                            "--output", str(tmp_path / f"r{n}{suffix}")])]:
            code, _, err = run_main(main, argv)  # a traceback fails the test here
            if code:
                lines = [line for line in err.splitlines() if not line.startswith("[")]
                assert len(lines) == 1 and "error:" in lines[0], err
                outcomes["refused"] += 1
            else:
                outcomes["ran"] += 1
    assert outcomes["refused"] > 0


def copy_of(trained, tmp_path, name="m.h5"):
    import shutil

    path = tmp_path / name
    shutil.copyfile(trained["model"], path)
    return path


def read_check_in_a_fresh_process(model, timeout=60):
    """`read_input_check` of `model` in a fresh process, under a timeout (a FIFO would hang a
    reader that followed it): (exit code, its last line of stderr)."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from covid19xray.cli import UserError\n"
            "from covid19xray.model_file import read_input_check\n"
            "try:\n"
            "    read_input_check(sys.argv[1])\n"
            "except UserError as err:\n"
            "    sys.exit(str(err))\n")
    result = subprocess.run([sys.executable, "-c", code, str(model)], capture_output=True,
                            text=True, timeout=timeout, cwd=ROOT)
    return result.returncode, (result.stderr.strip().splitlines() or [""])[-1]


def damage_h5(path, how, tmp_path):
    import h5py

    from covid19xray.model_file import INPUT_CHECK_GROUP

    with h5py.File(path, "a") as f:
        group = f[INPUT_CHECK_GROUP]
        reference = group["reference"][()]
        if how == "external link to a FIFO":
            os.mkfifo(tmp_path / "fifo")
            del f[INPUT_CHECK_GROUP]
            f[INPUT_CHECK_GROUP] = h5py.ExternalLink(str(tmp_path / "fifo"), "/x")
        elif how == "reference stored in another file":
            (tmp_path / "other.bin").write_bytes(reference.astype("<f4").tobytes())
            del group["reference"]
            group.create_dataset("reference", shape=reference.shape, dtype="<f4",
                                 external=[(str(tmp_path / "other.bin"), 0,
                                            reference.nbytes)])
        elif how == "fitted_on Infinity":
            metadata = json.loads(group.attrs["metadata"])
            group.attrs["metadata"] = json.dumps({**metadata, "fitted_on": float("inf")})
        elif how == "a dangling soft link as the group":
            del f[INPUT_CHECK_GROUP]
            f[INPUT_CHECK_GROUP] = h5py.SoftLink("/nowhere")
        elif how == "a dataset where the group should be":
            del f[INPUT_CHECK_GROUP]
            f.create_dataset(INPUT_CHECK_GROUP, data=np.zeros(3))


@pytest.mark.parametrize("how, phrase", [
    ("reference stored in another file", "the reference is stored outside the file"),
    ("fitted_on Infinity", "its metadata is not what this project writes"),
    ("a dataset where the group should be", "is not a group"),
    # it ran unchecked, with a warning, before: now refused as Keras refuses links
    ("a dangling soft link as the group", "SoftLink, not an object of the file"),
])
def test_a_damaged_or_hostile_check_group_is_one_line(trained, tmp_path, how, phrase):
    path = copy_of(trained, tmp_path)
    damage_h5(path, how, tmp_path)
    code, _, err = run_main(predict_covid19.main, ["--model", str(path),
                                                   write_image(str(tmp_path / "x.png"), seed=1,
                                                               size=(40, 40))])
    assert_one_line_error(code, err, "predict_covid19.py", phrase)


def test_a_check_group_linked_to_a_fifo_is_refused_unfollowed(trained, tmp_path):
    """An HDF5 external link to a FIFO hung predict forever: it is refused without being
    followed, in a fresh process under a timeout."""
    path = copy_of(trained, tmp_path)
    damage_h5(path, "external link to a FIFO", tmp_path)
    code, line = read_check_in_a_fresh_process(path)
    assert code == 1 and "ExternalLink, not an object of the file" in line


def keras_with_member(trained, tmp_path, member):
    """A .keras copy of the trained model whose input check member is `member` (bytes)."""
    import zipfile

    import keras

    from covid19xray.model_file import CLASS_NAMES_MEMBER, INPUT_CHECK_MEMBER

    path = tmp_path / "m.keras"
    keras.models.load_model(trained["model"], compile=False).save(path)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(CLASS_NAMES_MEMBER, json.dumps(["covid", "normal"]))
        archive.writestr(INPUT_CHECK_MEMBER, member)
    return path


def npz(**arrays_or_bytes):
    """An npz archive (deflated) of .npy members, each an array or raw bytes."""
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, value in arrays_or_bytes.items():
            if isinstance(value, bytes):
                archive.writestr(f"{name}.npy", value)
            else:
                member = io.BytesIO()
                np.save(member, value)
                archive.writestr(f"{name}.npy", member.getvalue())
    return buffer.getvalue()


def npy_header(shape, dtype="<f4"):
    from numpy.lib import format as npy

    buffer = io.BytesIO()
    npy.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": False,
                                        "shape": shape})
    return buffer.getvalue()  # the magic string, then the header


@pytest.mark.parametrize("member, phrase", [
    # a header that claims 2 GB: refused before a byte is inflated
    (npz(reference=npy_header((100000, 5000)), metadata=np.zeros(3, np.uint8)),
     "reference.npy says it holds 2000000000 bytes"),
    # 4 MB of zeros that deflate to a few kB, under a header that says 16 bytes
    (npz(reference=npy_header((2, 2)) + bytes(4 << 20), metadata=np.zeros(3, np.uint8)),
     "reference.npy holds 17 bytes, not 16"),
    (npz(reference=np.array([["a", "b"]]), metadata=np.zeros(3, np.uint8)),
     "reference.npy is <U1 of shape (1, 2)"),
    (npz(reference=np.zeros((2, 2), np.complex64), metadata=np.zeros(3, np.uint8)),
     "reference.npy is complex64 of shape (2, 2)"),
])
def test_a_keras_member_is_bounded_by_its_npy_headers(trained, tmp_path, member, phrase):
    path = keras_with_member(trained, tmp_path, member)
    code, _, err = run_main(predict_covid19.main, ["--model", str(path),
                                                   write_image(str(tmp_path / "x.png"), seed=1,
                                                               size=(40, 40))])
    assert_one_line_error(code, err, "predict_covid19.py", phrase)


def test_attributes_are_bounded_by_their_stored_size_before_they_are_read(trained, tmp_path,
                                                                          monkeypatch):
    """A 200 MB metadata attribute and a 300 MB class name were read whole. The stored size is
    checked first (the bounds made small here: HDF5 stores more than 64 kB only in a file's
    dense attribute storage, which this test cannot give an existing group)."""
    from covid19xray import model_file

    image = write_image(str(tmp_path / "x.png"), seed=1, size=(40, 40))
    # one bound for every text the model file carries: the class names (19 bytes) pass, the
    # input check's metadata does not
    monkeypatch.setattr(model_file, "MAX_TEXT_BYTES", 100)
    code, _, err = run_main(predict_covid19.main, ["--model", trained["model"], image])
    assert_one_line_error(code, err, "predict_covid19.py",
                          "attribute metadata holds more than 100 bytes")
    monkeypatch.setattr(model_file, "MAX_TEXT_BYTES", 10)
    code, _, err = run_main(predict_covid19.main, ["--model", trained["model"], image])
    assert_one_line_error(code, err, "predict_covid19.py", "its class names (covid19_class_names)",
                          "attribute covid19_class_names holds more than 10 bytes")


def rewrite_as_variable_length(path, where, name, text):
    """The attribute `name` of the object `where` in the HDF5 file `path`, written again as a
    variable-length string: what h5py writes for a Python str, and so what every model saved
    before this round holds (their size is not in their stored size)."""
    import h5py

    with h5py.File(path, "a") as f:
        del f[where].attrs[name]
        f[where].attrs[name] = text
        assert f[where].attrs.get_id(name).get_type().is_variable_str()


@pytest.mark.parametrize("where, name, phrase", [
    ("covid19_input_check", "metadata", "attribute metadata holds more than 65536 bytes"),
    ("/", "covid19_class_names",
     "attribute covid19_class_names holds more than 65536 bytes"),
    ("/", "covid19_recalibration",
     "its recalibration is damaged (attribute covid19_recalibration holds more than 65536 "
     "bytes)"),
])
def test_a_variable_length_attribute_is_sized_from_the_file_before_it_is_read(
        trained, tmp_path, where, name, phrase):
    """A variable-length string's stored size is that of a pointer: its length is read from the
    attribute's message in the file, and a 1 MB one is refused unread."""
    import h5py

    path = copy_of(trained, tmp_path)
    if name == "covid19_recalibration":  # the model has none: add one to oversize
        with h5py.File(path, "a") as f:
            f.attrs[name] = "{}"
    rewrite_as_variable_length(path, where, name, "[" + " " * (1 << 20) + "]")
    code, _, err = run_main(predict_covid19.main, ["--model", str(path),
                                                   write_image(str(tmp_path / "x.png"), seed=1,
                                                               size=(40, 40))])
    assert_one_line_error(code, err, "predict_covid19.py", phrase)


def test_a_model_saved_with_variable_length_attributes_predicts_as_before(trained, tmp_path):
    import h5py

    from covid19xray.model_file import INPUT_CHECK_GROUP

    path = copy_of(trained, tmp_path)
    with h5py.File(path, "r") as f:
        metadata = f[INPUT_CHECK_GROUP].attrs["metadata"].decode()
        class_names = f.attrs["covid19_class_names"].decode()
    rewrite_as_variable_length(path, INPUT_CHECK_GROUP, "metadata", metadata)
    rewrite_as_variable_length(path, "/", "covid19_class_names", class_names)
    image = write_image(str(tmp_path / "x.png"), seed=1, size=(40, 40))
    rows = []
    for model, csv_path in [(trained["model"], tmp_path / "a.csv"), (path, tmp_path / "b.csv")]:
        code, _, err = run_main(predict_covid19.main, ["--model", str(model), image, "--csv",
                                                       str(csv_path)])
        assert code == 0, err
        rows.append(csv_path.read_text())
    assert rows[0] == rows[1] and rows[0].count("\n") == 2


@pytest.mark.parametrize("libver", ["earliest", "latest"])
def test_variable_length_sizes_are_read_from_either_header_version_and_its_continuations(
        tmp_path, libver):
    """Object headers of version 1 (h5py's default) and 2, attributes added after a dataset
    (so that they go into continuation blocks); dense attribute storage, which the reader does
    not parse, is refused rather than guessed."""
    import h5py

    from covid19xray.h5attributes import read_text_attribute, stored_length

    path = tmp_path / "a.h5"
    with h5py.File(path, "w", libver=libver) as f:
        group = f.create_group("g")
        group.create_dataset("d", data=np.zeros(4))
        for k in range(6):  # with the two below, 8: a version 2 header keeps them itself
            group.attrs[f"a{k}"] = "x" * (3000 + k)
        group.attrs["fixed"] = np.bytes_(b"y" * 50)
        group.attrs["several"] = np.array(["ab", "cde"], dtype=h5py.string_dtype())
    with h5py.File(path, "r") as f:
        group = f["g"]
        assert [stored_length(group, f"a{k}") for k in range(6)] == [3000 + k for k in range(6)]
        assert stored_length(group, "fixed") == 50 and stored_length(group, "several") == 5
        assert read_text_attribute(group, "a5", 3005) == "x" * 3005
        with pytest.raises(ValueError, match="attribute a5 holds more than 3004 bytes"):
            read_text_attribute(group, "a5", 3004)
        assert read_text_attribute(group, "absent", 10) is None
    dense = tmp_path / "dense.h5"
    with h5py.File(dense, "w", libver="latest") as f:
        for k in range(20):  # past 8, HDF5 moves a v2 header's attributes to dense storage
            f.attrs[f"a{k}"] = "z" * k
    with h5py.File(dense, "r") as f, \
            pytest.raises(ValueError, match="not stored in its object's header"):
        stored_length(f, "a3")


def test_an_input_check_member_that_stands_twice_in_the_zip_is_refused(trained, tmp_path):
    """Zip readers take the last of two members of one name: a second, planted copy would win
    unseen. Refused."""
    import zipfile

    from covid19xray.model_file import INPUT_CHECK_MEMBER

    path = keras_with_member(trained, tmp_path,
                             npz(reference=np.zeros((2, 4), np.float32),
                                 metadata=np.zeros(3, np.uint8)))
    with zipfile.ZipFile(path, "a") as archive, \
            pytest.warns(UserWarning, match="Duplicate name"):
        archive.writestr(INPUT_CHECK_MEMBER, b"the planted copy")
    code, _, err = run_main(predict_covid19.main, ["--model", str(path),
                                                   write_image(str(tmp_path / "x.png"), seed=1,
                                                               size=(40, 40))])
    assert_one_line_error(code, err, "predict_covid19.py", f"{INPUT_CHECK_MEMBER} stands 2 times")


def test_a_damaged_hdf5_header_is_one_line_from_every_model_file_reader(trained, tmp_path):
    """h5py raises OSError, RuntimeError, KeyError or TypeError for a damaged header (a bad
    version number, a checksum, a datatype): each reader of the model file answers with a
    `UserError` of one line, or reads the part, for seeded byte flips around our parts."""
    import random

    from covid19xray import model_file
    from covid19xray.cli import UserError

    data = open(trained["model"], "rb").read()
    around = [data.find(name) for name in (b"covid19_class_names", b"covid19_input_check",
                                           b"metadata")]
    assert min(around) > 0
    rng = random.Random(7)
    refused = 0
    for n in range(40):
        mutant = bytearray(data)
        base = rng.choice(around)
        for _ in range(rng.randint(1, 3)):
            mutant[max(0, base + rng.randint(-600, 200))] = rng.randrange(256)
        path = tmp_path / f"m{n}.h5"
        path.write_bytes(mutant)
        for reader in (model_file.read_class_names, model_file.read_input_check,
                       model_file.read_recalibration):
            try:
                reader(str(path))
            except UserError as err:
                assert "\n" not in str(err)
                refused += 1
        path.unlink()
    assert refused > 0  # the flips did reach what is read


def test_a_damaged_weights_file_is_one_line_for_train_and_the_audit(trained, tmp_path):
    """--weights names an HDF5 file that train and the audit hand to Keras: with its headers
    damaged, h5py raises RuntimeError, KeyError or TypeError besides OSError; each is one
    line (`load_vgg16_base`), never a traceback."""
    from covid19xray.cli import UserError
    from covid19xray.model import load_vgg16_base

    data = open(trained["model"], "rb").read()
    where = [data.find(name) for name in (b"model_weights", b"TREE", b"HEAP")]
    refused = 0
    for n, mutant in enumerate(mutants(data, where, 5, seed=3)):
        path = tmp_path / f"w{n}.h5"
        path.write_bytes(mutant)
        with pytest.raises(UserError) as err:
            load_vgg16_base(str(path))
        assert "\n" not in str(err.value) and "is not a VGG16 no-top weights file" in str(err.value)
        refused += 1
    assert refused == 5


def test_a_model_file_over_the_size_bound_is_refused_unread(tmp_path):
    """Keras reads its own parts of a model file (its config, the weights) with no bound of
    ours; the file's size bounds them, checked before a byte is read (a sparse file here)."""
    from covid19xray.model_file import MAX_MODEL_FILE_BYTES

    path = tmp_path / "huge.h5"
    with open(path, "wb") as f:
        f.truncate(MAX_MODEL_FILE_BYTES + 1)
    code, _, err = run_main(predict_covid19.main, ["--model", str(path), "--export",
                                                   str(tmp_path / "e")])
    assert_one_line_error(code, err, "predict_covid19.py", "over the limit of 1 GiB")
