"""Bad input never ends in a traceback, a wasted run or lost data.

Every case runs a script's main() on a broken input and checks three things a user would
notice: the exit code, the one line on stderr (which names the file or flag and what to do),
and that no file in the source data or among earlier outputs changed (checksums before/after).
"""

import os

import h5py
import keras
import pytest

import build_covid_dataset
import predict_covid19
import sample_kaggle_dataset
import train_covid19
from covid19_model import CLASS_NAMES_ATTR
from helpers import (HEADERS, assert_one_line_error, run_main, small_dataset, snapshot,
                     write_collection, write_huge_png, write_image, write_junk, write_kaggle)

# ---------------------------------------------------------------------------------------------
# build_covid_dataset.py
# ---------------------------------------------------------------------------------------------

HEADER = "patientid,finding,view,filename"


def covid_with_metadata(tmp_path, content):
    covid = tmp_path / "covid-chestxray-dataset"
    write_image(str(covid / "images" / "a.jpg"), seed=1, size=(32, 32))
    if content is not None:
        (covid / "metadata.csv").write_bytes(content)
    return str(covid)


@pytest.mark.parametrize("content, phrases", [
    (None, ["has no metadata.csv", "point it at a checkout of Cohen's"]),
    (b"", ["metadata.csv is empty"]),
    (b"\r\n", ["metadata.csv is empty"]),
    (HEADER.encode() + b"\n", ["metadata.csv has a header but no rows"]),
    (b"patientid,view,filename\n1,PA,a.jpg\n",
     ["has no finding column", "patientid,view,filename"]),
    (b"patientid,finding,filename\n1,COVID-19,a.jpg\n", ["has no view column"]),
    (b"patientid,finding,view\n1,COVID-19,PA\n", ["has no filename column"]),
    (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", ["has no finding, view, filename column"]),
    (HEADER.encode() + b"\n1,COVID-19,PA,gone.jpg\n2,SARS,PA,a.jpg\n",
     ["none of the 1 matching rows has its image", "missing files: 1, refused: 0",
      "is the checkout complete"]),
])
def test_broken_metadata_is_one_line_and_touches_nothing(tmp_path, content, phrases):
    covid = covid_with_metadata(tmp_path, content)
    output = tmp_path / "dataset" / "covid"
    before = snapshot(covid)
    code, out, err = run_main(build_covid_dataset.main, ["--covid", covid, "--output", str(output)])
    assert_one_line_error(code, err, "build_covid_dataset.py", *phrases)
    assert snapshot(covid) == before
    assert not output.exists()  # nothing is created before the metadata is understood


def test_a_nul_byte_in_a_filename_is_refused_not_a_crash(tmp_path):
    covid = covid_with_metadata(tmp_path, HEADER.encode() + b"\n1,COVID-19,PA,a\0.jpg\n"
                                b"2,COVID-19,PA,a.jpg\n")
    code, out, err = run_main(build_covid_dataset.main,
                              ["--covid", covid, "--output", str(tmp_path / "out")])
    assert code == 0, err
    assert err == "[WARNING] refusing 'a\\x00.jpg': not a file inside --covid\n"
    assert "copied: 1" in out and "refused: 1" in out
    assert os.listdir(tmp_path / "out") == ["a.jpg"]


@pytest.mark.parametrize("encoding, delimiter", [
    ("utf-16", ","),      # a spreadsheet's "Unicode text", with its byte-order mark
    ("cp1252", ","),      # Windows' default; the notes hold a byte that is not UTF-8
    ("utf-8-sig", ";"),   # a European spreadsheet's CSV
    ("utf-8", "\t"),
])
def test_metadata_in_other_encodings_and_delimiters_still_builds(tmp_path, encoding, delimiter):
    rows = [HEADER + ",notes", "1,COVID-19,PA,a.jpg,São Paulo", "2,SARS,PA,b.jpg,x"]
    covid = covid_with_metadata(tmp_path, delimiter.join(rows[0].split(",")).encode())
    write_image(os.path.join(covid, "images", "b.jpg"), seed=2, size=(32, 32))
    text = "\r\n".join(delimiter.join(row.split(",")) for row in rows) + "\r\n"
    with open(os.path.join(covid, "metadata.csv"), "wb") as f:
        f.write(text.encode(encoding))
    output = tmp_path / "out"
    code, out, err = run_main(build_covid_dataset.main, ["--covid", covid, "--output", str(output)])
    assert code == 0, err
    assert os.listdir(output) == ["a.jpg"]
    assert "rows read: 2, rows matched: 1, copied: 1" in out


def output_cases(tmp_path, source):
    """(name, --output value) for every output a builder must refuse."""
    a_file = tmp_path / "a-file"
    a_file.write_text("keep me")
    return {
        "output is a file": (str(a_file), ["is a file, not a folder"]),
        "output under a file": (str(a_file / "covid"), ["cannot be created"]),
        "output is the source": (source, ["source data is never modified"]),
        "output inside the source": (os.path.join(source, "images"),
                                     ["source data is never modified"]),
    }


@pytest.mark.parametrize("case", ["output is a file", "output under a file",
                                  "output is the source", "output inside the source"])
def test_covid_builder_refuses_bad_outputs(tmp_path, case):
    covid = write_collection(str(tmp_path / "c"), "current")
    output, phrases = output_cases(tmp_path, covid)[case]
    before = snapshot(str(tmp_path))
    code, _, err = run_main(build_covid_dataset.main, ["--covid", covid, "--output", output])
    assert_one_line_error(code, err, "build_covid_dataset.py", "--output", *phrases)
    assert snapshot(str(tmp_path)) == before


def test_unwritable_output_folder(tmp_path, monkeypatch):
    # Tests may run as root, for whom chmod does not block writing: ask os.access instead.
    covid = write_collection(str(tmp_path / "c"), "current")
    output = tmp_path / "read-only"
    output.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: (
        False if os.path.abspath(path) == str(output) else real_access(path, mode)))
    code, _, err = run_main(build_covid_dataset.main, ["--covid", covid, "--output", str(output)])
    assert_one_line_error(code, err, "build_covid_dataset.py", f"--output '{output}' is not "
                          "writable")
    assert os.listdir(output) == []


# ---------------------------------------------------------------------------------------------
# sample_kaggle_dataset.py
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["output is a file", "output under a file",
                                  "output is the source", "output inside the source"])
def test_kaggle_sampler_refuses_bad_outputs(tmp_path, case):
    kaggle = write_kaggle(str(tmp_path / "chest_xray"))
    output, phrases = output_cases(tmp_path, kaggle)[case]
    before = snapshot(str(tmp_path))
    code, _, err = run_main(sample_kaggle_dataset.main, ["--kaggle", kaggle, "--output", output])
    assert_one_line_error(code, err, "sample_kaggle_dataset.py", "--output", *phrases)
    assert snapshot(str(tmp_path)) == before


@pytest.mark.parametrize("make, phrases", [
    (lambda root: None, ["--kaggle", "is not a folder"]),
    (lambda root: os.makedirs(os.path.join(root, "train", "PNEUMONIA")),
     ["has no train/NORMAL folder", "it contains: train"]),
    (lambda root: os.makedirs(os.path.join(root, "train", "NORMAL")), ["has no images"]),
])
def test_kaggle_sampler_bad_sources(tmp_path, make, phrases):
    kaggle = str(tmp_path / "chest_xray")
    make(kaggle)
    code, _, err = run_main(sample_kaggle_dataset.main,
                            ["--kaggle", kaggle, "--output", str(tmp_path / "out")])
    assert_one_line_error(code, err, "sample_kaggle_dataset.py", *phrases)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# train_covid19.py
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A working folder holding a previous run's outputs, which no failing run may touch."""
    monkeypatch.chdir(tmp_path)
    for name, content in [("covid19.h5", b"earlier model"), ("plot.png", b"earlier plot"),
                          ("roc.png", b"earlier roc"), ("report.json", b"{}")]:
        (tmp_path / name).write_bytes(content)
    return tmp_path


def train(*argv):
    return run_main(train_covid19.main, ["--weights", "none", "--epochs", "1",
                                         "--batch-size", "2", *argv])


@pytest.mark.parametrize("case, argv, phrases, exit_code", [
    ("no --dataset", [], ["the following arguments are required: -d/--dataset"], 2),
    ("missing", ["--dataset", "nowhere"], ["--dataset 'nowhere' is not a folder"], 1),
    ("a file", ["--dataset", "covid19.h5"], ["--dataset 'covid19.h5' is not a folder"], 1),
    ("empty", ["--dataset", "empty"], ["--dataset 'empty' has no images",
                                       "put one folder of images per class in it"], 1),
    ("one class", ["--dataset", "one"], ["found 1 class folder(s) (covid); training needs two "
                                         "or more, such as covid/ and normal/"], 1),
    ("class too small", ["--dataset", "small"], [
        "too few images for a stratified 80/20 split (covid: 1, normal: 5); scikit-learn: "
        "The least populated classes in y have only 1 member, which is too few"], 1),
    ("patient split, no manifest", ["--dataset", "ok", "--split", "patient"], [
        "--split patient needs ok/manifest.csv", "use --split random"], 1),
    ("--epochs 0", ["--dataset", "ok", "--epochs", "0"],
     ["argument --epochs: must be greater than 0, got 0"], 2),
    ("negative --batch-size", ["--dataset", "ok", "--batch-size", "-4"],
     ["argument --batch-size: must be greater than 0, got -4"], 2),
    ("--batch-size over the split", ["--dataset", "ok", "--batch-size", "9"],
     ["--batch-size 9 is larger than the training split (8 images); use --batch-size 8 or less"],
     1),
    ("--model missing folder", ["--dataset", "ok", "--model", "no/m.h5"],
     ["--model 'no/m.h5'", "does not exist; create it first"], 1),
    ("--plot missing folder", ["--dataset", "ok", "--plot", "no/p.png"],
     ["--plot 'no/p.png'", "does not exist"], 1),
    ("--report missing folder", ["--dataset", "ok", "--report", "no/r.json"],
     ["--report 'no/r.json'", "does not exist"], 1),
    ("--model not .h5", ["--dataset", "ok", "--model", "covid19.model"],
     ["--model 'covid19.model' must end in .h5"], 1),
    ("--plot inside --dataset", ["--dataset", "ok", "--plot", "ok/covid/plot.png"],
     ["--plot 'ok/covid/plot.png' is inside --dataset 'ok'", "source data is never modified"],
     1),
    ("--weights missing", ["--dataset", "ok", "--weights", "none.h5"],
     ["--weights 'none.h5': no such file"], 1),
    ("--weights not HDF5", ["--dataset", "ok", "--weights", "report.json"],
     ["--weights 'report.json' is not a VGG16 no-top weights file"], 1),
])
def test_training_refuses_bad_input_in_one_line(workdir, case, argv, phrases, exit_code):
    (workdir / "empty").mkdir()
    small_dataset(workdir / "one", {"covid": 4})
    small_dataset(workdir / "small", {"covid": 1, "normal": 5})
    small_dataset(workdir / "ok", {"covid": 5, "normal": 5})
    before = snapshot(str(workdir))
    code, out, err = run_main(train_covid19.main, argv) if case == "no --dataset" else train(
        *argv)
    assert_one_line_error(code, err, "train_covid19.py", *phrases, exit_code=exit_code)
    assert snapshot(str(workdir)) == before
    assert "[INFO] training head..." not in out  # found before any training


def test_weights_with_the_wrong_layer_shapes(workdir, tiny_dataset):
    # a VGG16 for one-channel images: block1_conv1's kernel is 3x3x1x64, not 3x3x3x64
    gray = keras.applications.VGG16(weights=None, include_top=False, input_shape=(224, 224, 1))
    gray.save(str(workdir / "gray_vgg16.h5"))
    before = snapshot(str(workdir))
    code, out, err = train("--dataset", tiny_dataset, "--weights", "gray_vgg16.h5")
    assert_one_line_error(code, err, "train_covid19.py", "--weights 'gray_vgg16.h5' is not a "
                          "VGG16 no-top weights file like "
                          "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")
    assert snapshot(str(workdir)) == before
    assert "[INFO] loading images..." not in out  # the weights fail before the images load


def test_unwritable_output_folder_is_found_before_training(workdir, tiny_dataset, monkeypatch):
    (workdir / "locked").mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: (
        False if os.path.abspath(path) == str(workdir / "locked") else real_access(path, mode)))
    code, out, err = train("--dataset", tiny_dataset, "--model", "locked/m.h5")
    assert_one_line_error(code, err, "train_covid19.py",
                          f"--model 'locked/m.h5': folder '{workdir / 'locked'}' is not writable")
    assert out == ""


def test_only_unreadable_images(workdir):
    write_junk(str(workdir / "junk" / "covid"))
    write_junk(str(workdir / "junk" / "normal"))
    code, _, err = train("--dataset", "junk")
    assert_one_line_error(code, err, "train_covid19.py",
                          "--dataset 'junk': none of its images could be read", warnings=7)
    assert "[WARNING] skipped 6 unreadable image(s)" in err


def outputs_after(workdir):
    return {name: (workdir / name).read_bytes() for name in
            ["covid19.h5", "plot.png", "roc.png", "report.json"]}


@pytest.mark.parametrize("where", ["mid-training", "mid-save"])
def test_ctrl_c_keeps_every_earlier_output(workdir, tiny_dataset, monkeypatch, where):
    before = outputs_after(workdir)
    if where == "mid-training":
        def interrupted_train(*args, **kwargs):
            raise KeyboardInterrupt
        monkeypatch.setattr(train_covid19, "train", interrupted_train)
    else:
        def interrupted_save(model, path, class_names):
            with open(path, "wb") as f:
                f.write(b"half a mod")  # plot, roc and report are written already
            raise KeyboardInterrupt
        monkeypatch.setattr(train_covid19, "save_model", interrupted_save)
    code, _, err = train("--dataset", tiny_dataset, "--cache-features", "--batch-size", "4")
    assert code == 130
    assert err.strip().splitlines()[-1] == (
        "train_covid19.py: interrupted; no output was replaced")
    assert outputs_after(workdir) == before
    assert sorted(os.listdir(workdir)) == ["covid19.h5", "plot.png", "report.json", "roc.png"]


def test_a_full_disk_mid_save_is_one_line_and_keeps_every_earlier_output(workdir, tiny_dataset,
                                                                         monkeypatch):
    before = outputs_after(workdir)

    def full_disk(model, path, class_names):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(train_covid19, "save_model", full_disk)
    code, _, err = train("--dataset", tiny_dataset, "--cache-features", "--batch-size", "4")
    assert_one_line_error(code, err, "train_covid19.py", "cannot write the outputs (No space left "
                          "on device); every earlier covid19.h5, plot.png and report.json was "
                          "kept", warnings=4)  # the 4 come from the junk in the dataset
    assert outputs_after(workdir) == before
    assert sorted(os.listdir(workdir)) == ["covid19.h5", "plot.png", "report.json", "roc.png"]


# ---------------------------------------------------------------------------------------------
# predict_covid19.py
# ---------------------------------------------------------------------------------------------


def predict(*argv):
    return run_main(predict_covid19.main, list(argv))


@pytest.fixture
def models(tmp_path, trained):
    """Files that are not usable models, beside an image to predict."""
    (tmp_path / "text.h5").write_text("not a model")
    model = keras.models.load_model(trained["model"])
    model.save(str(tmp_path / "no_names.h5"))  # a Keras model without class names
    model.save(str(tmp_path / "three_names.h5"))
    with h5py.File(tmp_path / "three_names.h5", "a") as f:
        f.attrs[CLASS_NAMES_ATTR] = '["covid", "normal", "pneumonia"]'
    write_image(str(tmp_path / "x.jpg"), seed=1, size=(40, 40))
    return tmp_path


@pytest.mark.parametrize("model, extra, phrases", [
    ("missing.h5", [], ["--model", "missing.h5': no such file; train one with train_covid19.py"]),
    ("text.h5", [], ["text.h5' is not an HDF5 model file (.h5) saved by train_covid19.py"]),
    ("no_names.h5", [], ["no_names.h5' has no class names", "retrain if it is older"]),
    ("three_names.h5", [], ["three_names.h5' has 2 outputs but 3 class names "
                            "(covid, normal, pneumonia)"]),
    ("TRAINED", ["nowhere.jpg"], ["'nowhere.jpg': no such file or folder"]),
    ("TRAINED", ["--csv", "no/p.csv"], ["--csv 'no/p.csv'", "does not exist"]),
    ("TRAINED", ["--gradcam", "x.jpg"], ["--gradcam 'x.jpg' is a file, not a folder"]),
])
def test_prediction_refuses_bad_input_in_one_line(models, trained, monkeypatch, model, extra,
                                                  phrases):
    monkeypatch.chdir(models)
    model = trained["model"] if model == "TRAINED" else model
    before = snapshot(str(models), trained["dataset"])
    code, out, err = predict("--model", model, "x.jpg", *extra)
    assert_one_line_error(code, err, "predict_covid19.py", *phrases)
    assert out == ""
    assert snapshot(str(models), trained["dataset"]) == before


def test_prediction_with_only_unreadable_images(tmp_path, trained):
    junk = write_junk(str(tmp_path))
    code, out, err = predict("--model", trained["model"], *junk)
    assert_one_line_error(code, err, "predict_covid19.py",
                          "none of the given images could be read", warnings=3)


# ---------------------------------------------------------------------------------------------
# Round 2: links, decompression bombs, names that are not UTF-8, SIGTERM, concurrent runs
# ---------------------------------------------------------------------------------------------


def test_a_linked_images_folder_builds_and_a_link_to_a_non_image_is_never_copied(tmp_path):
    covid = write_collection(str(tmp_path / "c"), "current")
    # images/ lives on "another disk"; the checkout holds a link to it
    os.rename(os.path.join(covid, "images"), tmp_path / "big-disk")
    os.symlink(tmp_path / "big-disk", os.path.join(covid, "images"))
    # a crafted row: an image name that links to a private file outside the checkout
    (tmp_path / "id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    os.symlink(tmp_path / "id_rsa", tmp_path / "big-disk" / "evil.png")
    columns = [name.strip().lower() for name in HEADERS["current"].split(",")]
    row = {"patientid": "99", "finding": "COVID-19", "view": "PA", "folder": "images",
           "filename": "evil.png"}
    with open(os.path.join(covid, "metadata.csv"), "a") as f:
        f.write(",".join(row.get(column, "") for column in columns) + "\r\n")
    output = tmp_path / "dataset" / "covid"
    before = snapshot(str(tmp_path / "big-disk"), str(tmp_path / "id_rsa"))
    code, out, err = run_main(build_covid_dataset.main, ["--covid", covid, "--output",
                                                         str(output)])
    assert code == 0, err
    assert sorted(os.listdir(output)) == ["a.jpg", "d.png", "g.jpeg", "v.jpg"]
    assert f"[WARNING] refusing {os.path.join(covid, 'images', 'evil.png')}: not an image (no " \
           "JPEG, PNG, BMP or TIFF signature)" in err.splitlines()
    assert out.strip().splitlines()[-1].endswith(
        "copied: 4, already present: 0, missing files: 1, refused: 2, duplicates: 1, "
        "conflicts: 0")  # ../outside.jpg and evil.png
    assert "evil.png" not in (tmp_path / "dataset" / "manifest.csv").read_text()
    assert snapshot(str(tmp_path / "big-disk"), str(tmp_path / "id_rsa")) == before


@pytest.fixture
def bomb_dataset(tmp_path):
    """A small dataset with, among its images, a 1 MB-class PNG that claims 100.5 megapixels."""
    dataset = small_dataset(tmp_path / "d", {"covid": 5, "normal": 5})
    bomb = write_huge_png(os.path.join(dataset, "covid", "bomb.png"), 10050, 10000)
    return dataset, bomb


def test_a_decompression_bomb_is_skipped_from_its_header_never_decoded(bomb_dataset, tmp_path,
                                                                      monkeypatch):
    import covid19_images

    dataset, bomb = bomb_dataset
    with open(bomb, "rb") as f:
        bomb_bytes = f.read()
    decoded = []
    real_imdecode = covid19_images.cv2.imdecode
    monkeypatch.setattr(covid19_images.cv2, "imdecode",
                        lambda data, flags: decoded.append(len(data)) or real_imdecode(data,
                                                                                       flags))
    code, out, err = train("--dataset", dataset, "--cache-features", "--model",
                           str(tmp_path / "m.h5"), "--plot", str(tmp_path / "p.png"),
                           "--report", str(tmp_path / "r.json"), "--batch-size", "4")
    assert code == 0, err
    assert err.strip().splitlines() == [
        f"[WARNING] skipping {bomb}: 10050x10000 pixels (100.5 megapixels), over the limit of "
        "100 megapixels", "[WARNING] skipped 1 unreadable image(s)"]
    assert "[INFO] 10 images" in out
    assert len(bomb_bytes) not in decoded and len(decoded) == 10
    # prediction and the builders' checks refuse it the same way
    code, out, err = run_main(predict_covid19.main, ["--model", str(tmp_path / "m.h5"), bomb])
    assert_one_line_error(code, err, "predict_covid19.py", "none of the given images could be "
                          "read", warnings=1)
    assert "over the limit of 100 megapixels" in err.splitlines()[0]


NOT_UTF8 = os.fsdecode(b"x-\xff\xfe.png")  # 'x-\udcff\udcfe.png'


def test_names_that_are_not_utf8_are_trained_on_predicted_and_written_back(tmp_path):
    import csv
    import json

    dataset = small_dataset(tmp_path / "d", {"covid": 5, "normal": 5})
    odd = os.path.join(dataset, "covid", NOT_UTF8)
    os.rename(os.path.join(dataset, "covid", "0.png"), odd)
    shown_name = "x-\ufffd\ufffd.png"
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    # seed 25 puts the file in the test split, so report.json lists it
    code, out, err = train("--dataset", dataset, "--cache-features", "--seed", "25",
                           "--batch-size", "4", "--model", str(out_dir / "m.h5"),
                           "--plot", str(out_dir / "p.png"), "--report", str(out_dir / "r.json"))
    assert code == 0, err
    assert err.strip().splitlines() == [
        f"[WARNING] {os.path.join(dataset, 'covid', shown_name)}: the name is not valid UTF-8; "
        "it is shown with U+FFFD here and kept as it is in the files this run writes"]
    report = json.loads((out_dir / "r.json").read_text())
    assert os.path.join("covid", NOT_UTF8) in report["test_files"]  # the real name, recovered

    code, out, err = run_main(predict_covid19.main, [
        "--model", str(out_dir / "m.h5"), odd, "--csv", str(out_dir / "p.csv"),
        "--gradcam", str(out_dir / "gradcam")])
    assert code == 0, err
    assert out.splitlines()[0].startswith(f"{os.path.join(dataset, 'covid', shown_name)}: ")
    with open(out_dir / "p.csv", newline="", encoding="utf-8", errors="surrogateescape") as f:
        assert list(csv.reader(f))[1][0] == odd
    assert os.listdir(out_dir / "gradcam") == [os.fsdecode(b"x-\xff\xfe_gradcam.png")]


def test_a_kaggle_image_named_not_utf8_is_copied_and_listed_as_it_is(tmp_path):
    kaggle = write_kaggle(str(tmp_path / "chest_xray"))
    folder = os.path.join(kaggle, "train", "NORMAL")
    for name in os.listdir(folder):
        if not name.startswith("."):
            os.remove(os.path.join(folder, name))
    write_image(os.path.join(folder, NOT_UTF8), seed=3, size=(24, 24))
    code, out, err = run_main(sample_kaggle_dataset.main, [
        "--kaggle", kaggle, "--output", str(tmp_path / "ds" / "normal")])
    assert code == 0, err
    assert os.listdir(tmp_path / "ds" / "normal") == [NOT_UTF8]
    with open(tmp_path / "ds" / "manifest.csv", encoding="utf-8", errors="surrogateescape") as f:
        assert f"normal/{NOT_UTF8}," in f.read()


def test_sigterm_during_training_is_ctrl_c_exit_143(workdir, tiny_dataset):
    import signal
    import subprocess
    import sys

    from helpers import ROOT

    before = outputs_after(workdir)
    process = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "train_covid19.py"), "--dataset", tiny_dataset,
         "--weights", "none", "--epochs", "50", "--batch-size", "4"],
        cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stdout:  # wait until it trains
        if line.startswith("Epoch 2/50"):
            process.send_signal(signal.SIGTERM)
            break
    process.stdout.read()
    err = process.stderr.read()
    assert process.wait(timeout=120) == 143
    assert err.strip().splitlines()[-1] == (
        "train_covid19.py: terminated (SIGTERM); no output was replaced")
    assert "Traceback" not in err
    assert outputs_after(workdir) == before
    assert sorted(os.listdir(workdir)) == ["covid19.h5", "plot.png", "report.json", "roc.png"]


def terminate_here(*args, **kwargs):
    """Stands in for a step of a script: SIGTERM arrives while it runs."""
    import signal

    os.kill(os.getpid(), signal.SIGTERM)
    raise AssertionError("SIGTERM did not stop the run")


def test_sigterm_stops_every_script_in_one_line(tmp_path, trained, monkeypatch):
    import audit_covid19
    import covid19_building

    # prediction: terminated between batches; the CSV never appears
    monkeypatch.setattr(predict_covid19, "predict", terminate_here)
    code, _, err = run_main(predict_covid19.main, ["--model", trained["model"],
                                                   trained["dataset"], "--csv",
                                                   str(tmp_path / "p.csv")])
    assert code == 143 and err.strip().splitlines()[-1] == (
        "predict_covid19.py: terminated (SIGTERM); no output was replaced")
    # the audit: terminated while it cross-validates
    monkeypatch.setattr(audit_covid19, "cross_validate", terminate_here)
    (tmp_path / "audit.json").write_text("{}")
    code, _, err = run_main(audit_covid19.main, [
        "--dataset", trained["dataset"], "--weights", "none", "--folds", "2",
        "--report", str(tmp_path / "audit.json"), "--plot", str(tmp_path / "audit.png")])
    assert code == 143 and "audit_covid19.py: terminated (SIGTERM)" in err
    assert (tmp_path / "audit.json").read_text() == "{}"
    # a builder: terminated while copying; what it copied is whole, nothing is half-written
    monkeypatch.setattr(covid19_building, "copy_new_file", terminate_here)
    covid = write_collection(str(tmp_path / "c"), "current")
    code, _, err = run_main(build_covid_dataset.main, ["--covid", covid, "--output",
                                                       str(tmp_path / "ds" / "covid")])
    assert code == 143 and "build_covid_dataset.py: terminated (SIGTERM)" in err
    assert sorted(os.listdir(tmp_path)) == ["audit.json", "c", "ds", "outside.jpg"]
    assert os.listdir(tmp_path / "ds" / "covid") == []


def test_prediction_reads_predicts_and_writes_a_batch_at_a_time(trained, tmp_path, monkeypatch):
    images = [write_image(str(tmp_path / "in" / f"{i:02d}.png"), seed=i, size=(60, 50))
              for i in range(11)]
    batches = []
    real_predict = predict_covid19.predict

    def recorded(model, batch):
        batches.append(len(batch))
        return real_predict(model, batch)

    monkeypatch.setattr(predict_covid19, "predict", recorded)
    code, out, err = run_main(predict_covid19.main, ["--model", trained["model"],
                                                     str(tmp_path / "in"), "--batch-size", "4",
                                                     "--csv", str(tmp_path / "p.csv")])
    assert code == 0, err
    assert batches == [4, 4, 3]
    assert [line.split(":")[0] for line in out.splitlines()[:-1]] == images


def test_a_second_run_on_the_same_outputs_stops_at_its_start(workdir, tiny_dataset):
    import subprocess
    import sys

    from helpers import ROOT

    holder = subprocess.Popen(
        [sys.executable, "-c", "import time\nfrom covid19_files import claim_outputs\n"
         f"with claim_outputs({str(workdir / 'report.json')!r}):\n"
         "    print('held', flush=True)\n    time.sleep(60)\n"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        before = snapshot(str(workdir))
        code, out, err = train("--dataset", tiny_dataset)
        assert_one_line_error(code, err, "train_covid19.py", f"'{workdir / 'report.json'}' is "
                              f"being written by another run (process {holder.pid}); wait for "
                              "it to end, or write elsewhere")
        assert out == "" and snapshot(str(workdir)) == before
    finally:
        holder.kill()
        holder.wait()
    # once that run is gone (killed: its lock was never released by hand), the next one runs
    code, out, err = train("--dataset", tiny_dataset, "--batch-size", "4", "--cache-features")
    assert code == 0, err


# ---------------------------------------------------------------------------------------------
# audit_covid19.py
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("counts, argv, phrases, exit_code", [
    ({"covid": 4}, [], ["the audit compares two classes; --dataset 'ds' has 1 (covid)"], 1),
    ({"covid": 4, "normal": 4, "pneumonia": 4}, [],
     ["the audit compares two classes; --dataset 'ds' has 3 (covid, normal, pneumonia)"], 1),
    ({"covid": 2, "normal": 4}, ["--folds", "3"],
     ["--folds 3 needs at least 3 images of each class; the smallest class has 2"], 1),
    ({"covid": 4, "normal": 4}, ["--folds", "1"], ["--folds must be 2 or more, got 1"], 2),
    ({"covid": 4, "normal": 4}, ["--report", "ds/covid/audit.json"],
     ["--report 'ds/covid/audit.json' is inside --dataset 'ds'"], 1),
    ({"covid": 4, "normal": 4}, ["--plot", "no/audit.png"], ["--plot 'no/audit.png'",
                                                             "does not exist"], 1),
])
def test_the_audit_refuses_bad_input_in_one_line(tmp_path, monkeypatch, counts, argv, phrases,
                                                 exit_code):
    import audit_covid19

    monkeypatch.chdir(tmp_path)
    small_dataset(tmp_path / "ds", counts)
    (tmp_path / "audit.json").write_text("{}")
    before = snapshot(str(tmp_path))
    code, out, err = run_main(audit_covid19.main, ["--dataset", "ds", "--weights", "none",
                                                   "--epochs", "1", *argv])
    assert_one_line_error(code, err, "audit_covid19.py", *phrases, exit_code=exit_code)
    assert snapshot(str(tmp_path)) == before
