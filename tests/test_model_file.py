"""covid19xray/model_file.py as the scripts meet it: a damaged model file, .h5 or .keras, is one
line from every script that reads one, never a traceback."""

import random
import zipfile

import pytest

import predict_covid19
import recalibrate_covid19
from covid19xray.model_file import read_input_check, save_model
from helpers import run_main, small_dataset


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
