"""Bad input, round 6: files whose chunks lie, inputs that are not numbers, runs that diverge,
names that would forge output lines."""

import csv
import io
import os
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

import build_covid_dataset
import predict_covid19
import train_covid19
from covid19xray.images import decode
from helpers import assert_one_line_error, run_main, small_dataset, write_image


def png_with_chunk(png, kind, payload):
    """`png` with a chunk inserted before its first IDAT."""
    at = png.index(b"IDAT") - 4
    chunk = (struct.pack(">I", len(payload)) + kind + payload
             + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))
    return png[:at] + chunk + png[at:]


def test_a_16_bit_png_whose_sbit_chunk_says_40_bits_is_read_as_if_it_had_none():
    values = (np.arange(64 * 64).reshape(64, 64) * 7).astype(np.uint16)
    ok, encoded = cv2.imencode(".png", values)
    plain = encoded.tobytes()
    lying = png_with_chunk(plain, b"sBIT", bytes([40]))
    np.testing.assert_array_equal(decode(lying), decode(plain))


def test_an_rgba_png_turned_by_its_exif_orientation_keeps_its_alpha_in_place():
    rgba = np.zeros((40, 60, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 255
    rgba[:10, :, 3] = 0  # the top ten rows transparent
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to show upright
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, "PNG", exif=exif.tobytes())
    image = decode(buffer.getvalue())
    assert image.shape == (60, 40, 3)  # upright
    # the top rows, turned clockwise, are the right-hand columns: black there, red elsewhere
    assert (image[:, -10:] == 0).all() and (image[:, :-10, 2] == 200).all()


def test_the_exports_check_rejects_nan_and_infinite_input(trained):
    """The graph both exports run (`export.network_with_check`): NaN or infinite pixels give a
    NaN distance, which compared with a threshold is never above it; they are rejected (2)."""
    from covid19xray.export import network_with_check
    from covid19xray.input_check import read_input_check
    from covid19xray.model import load_classifier

    model, _ = load_classifier(trained["model"])
    network = network_with_check(model, read_input_check(trained["model"]))
    images = np.full((3, 224, 224, 3), 0.5, np.float32)
    images[0, 10, 10, 0] = np.nan
    images[1, 20, 20, 1] = np.inf
    outputs = network(images, training=False)
    checked = np.asarray(outputs["input_check"]).tolist()
    assert checked[:2] == [2, 2]
    assert not np.isfinite(np.asarray(outputs["input_distance"])[:2]).any()


@pytest.mark.parametrize("lr", ["nan", "inf"])
def test_a_learning_rate_that_is_no_number_is_a_usage_error(lr):
    code, _, err = run_main(train_covid19.main, ["--dataset", "d", "--lr", lr])
    assert_one_line_error(code, err, "train_covid19.py", "argument --lr: must be a finite "
                          f"number greater than 0, got {lr}", exit_code=2)


def test_a_learning_rate_that_makes_training_diverge_stops_before_any_output(tmp_path):
    """1e30 is a finite number: the loss stops being one, and the run ends at that epoch in one
    line, with no model, plot or report written."""
    dataset = small_dataset(tmp_path / "d", {"covid": 6, "normal": 6})
    out = tmp_path / "out"
    out.mkdir()
    code, stdout, err = run_main(train_covid19.main, [
        "--dataset", dataset, "--weights", "none", "--epochs", "3", "--batch-size", "4",
        "--lr", "1e30", "--cache-features", "--model", str(out / "m.h5"), "--plot",
        str(out / "p.png"), "--report", str(out / "r.json"), "--cache-dir",
        str(tmp_path / "c")])
    assert_one_line_error(code, err, "train_covid19.py", "training diverged: the loss is",
                          "at epoch 1", "try a lower --lr")
    assert os.listdir(out) == []


@pytest.mark.parametrize("name", ["M.KERAS", "M.H5"])
def test_an_upper_case_model_suffix_is_refused_before_training(tmp_path, name):
    code, out, err = run_main(train_covid19.main, ["--dataset", str(tmp_path), "--model",
                                                   str(tmp_path / name)])
    assert_one_line_error(code, err, "train_covid19.py", "in lower case, as Keras reads the "
                          "name")
    assert "[INFO] loading images..." not in out


def test_a_files_name_can_neither_forge_a_line_nor_reach_the_terminal(trained, tmp_path):
    """A newline in a name would print a line of its own, as convincing as a real prediction;
    an ANSI escape would colour (or clear) the terminal. Both are shown escaped, on stdout and
    in warnings; the CSV keeps the real name."""
    folder = tmp_path / "in"
    folder.mkdir()
    forged = "fake.jpg: covid (covid 1.0000, normal 0.0000) [input ok: distance 0.10 <= 1.4]"
    names = [f"x\n{forged}\nx.png", "\x1b[2J\x1b[31mred.png"]
    for k, name in enumerate(names):
        write_image(str(folder / name), seed=k, size=(40, 40))
    (folder / "bad\x1b[31m.png").write_bytes(b"not an image")
    csv_path = tmp_path / "p.csv"
    code, out, err = run_main(predict_covid19.main, ["--model", trained["model"], str(folder),
                                                     "--csv", str(csv_path)])
    assert code == 0, err
    assert "\x1b" not in out + err and not any(line.startswith("fake.jpg")
                                               for line in out.splitlines())
    assert sum(line.startswith(str(folder)) for line in out.splitlines()) == 2
    assert "\\n" + forged in out and "\\x1b[31mred.png" in out
    assert "bad\\x1b[31m.png" in err
    with open(csv_path, newline="") as f:
        assert sorted(row["file"] for row in csv.DictReader(f)) == sorted(
            str(folder / name) for name in names)


def test_a_local_metadata_csv_is_read_with_the_bound_a_download_has(tmp_path, monkeypatch):
    """A 600 MB file was read whole; now past the bound (made small here) it is one line."""
    checkout = tmp_path / "covid"
    (checkout / "images").mkdir(parents=True)
    (checkout / "metadata.csv").write_text("finding,view,filename\n" + "COVID-19,PA,x.jpg\n" * 100)
    monkeypatch.setattr(build_covid_dataset, "METADATA_BYTES", 1000)
    code, _, err = run_main(build_covid_dataset.main, ["--covid", str(checkout), "--output",
                                                       str(tmp_path / "out" / "covid")])
    assert_one_line_error(code, err, "build_covid_dataset.py", "metadata.csv' is larger than")
    assert not (tmp_path / "out").exists()


def test_a_failed_predict_leaves_no_gradcam_folder_it_made(trained, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "junk.png").write_bytes(b"not an image")
    gradcam = tmp_path / "new" / "deeper" / "gradcam"
    code, _, err = run_main(predict_covid19.main, ["--model", trained["model"], str(folder),
                                                   "--gradcam", str(gradcam)])
    assert_one_line_error(code, err, "predict_covid19.py", "none of the given images could be "
                          "read", warnings=1)
    assert sorted(os.listdir(tmp_path)) == ["in"]  # new/deeper/gradcam made, then removed
