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
from helpers import (assert_one_line_error, run_main, small_dataset, snapshot, write_collection,
                     write_image, write_junk, write_kaggle)

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
