"""Fixtures shared by the test files: a messy tiny dataset and one trained model per session.

Helpers (image writers, run_main, snapshot...) live in `helpers.py`, on pytest's pythonpath.
"""

import os

import cv2
import numpy as np
import pytest

from helpers import (
    made_once,
    make_dataset,
    narrow_vgg16,
    run_main,
    write_junk,
    write_odd_formats,
)


def pytest_configure(config):
    """Each worker runs TensorFlow on one thread: two workers share two cores, and ops on the
    narrow network are too small to gain from a second thread (the subprocesses keep theirs).
    Not in pytest-xdist's controller, which runs no test: importing TensorFlow there would
    delay the workers' start by its import (4-5 s)."""
    if config.getoption("numprocesses", None) and not hasattr(config, "workerinput"):
        return  # the controller of `-n 2`
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def pytest_collection_modifyitems(items):
    """The tests marked `slow` (subprocesses, whole audits: 5-25 s each) first, the longest
    (`slow(seconds=...)`, about what it takes on a Zen 4) before the others: with two workers,
    a long test started last would leave the other worker idle until it ends."""
    def seconds(item):
        marker = item.get_closest_marker("slow")
        return 0 if marker is None else marker.kwargs.get("seconds", 5)

    items.sort(key=lambda item: -seconds(item))


@pytest.fixture(scope="session", autouse=True)
def random_vgg16_is_narrow():
    """`VGG16(weights=None, include_top=False, input_shape=...)`, which `--weights none` runs,
    builds `narrow_vgg16` in-process: the same layers and code paths for 1/64 of the forward
    passes' arithmetic. The subprocess tests, the weights files and `real_vgg16` keep the real
    network. Yields the real `keras.applications.VGG16`."""
    import keras

    real = keras.applications.VGG16

    def vgg16(*, weights="imagenet", include_top=True, input_shape=None, **options):
        if weights is None and not include_top and input_shape and not options:
            return narrow_vgg16(input_shape)
        return real(weights=weights, include_top=include_top, input_shape=input_shape,
                    **options)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(keras.applications, "VGG16", vgg16)
        yield real


@pytest.fixture
def real_vgg16(random_vgg16_is_narrow):
    """The real `keras.applications.VGG16`, for tests about its shapes or its weights file."""
    return random_vgg16_is_narrow


@pytest.fixture(scope="session", autouse=True)
def private_feature_cache(tmp_path_factory):
    """Runs cache features in $XDG_CACHE_HOME/covid19-xray: point it at a temporary folder, so
    the tests never write into the user's cache (and never read a stale entry from it)."""
    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if previous is None:
        del os.environ["XDG_CACHE_HOME"]
    else:
        os.environ["XDG_CACHE_HOME"] = previous


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """Two classes of 5 readable images (an 8/2 split, so 1-2 epochs of VGG16 take seconds),
    as messy as real folders: mixed JPEG/PNG, grayscale, 16-bit, RGBA and palette images, and
    files that are not images or cannot be decoded. Made once for the run (`made_once`)."""
    def make(folder):
        root = str(folder)
        make_dataset(root, per_class=5)
        # swap three normal images for the odd formats, keeping 5 readable images per class
        for name in ["normal-02.jpg", "normal-03.png", "normal-04.jpg"]:
            os.remove(os.path.join(root, "normal", name))
        write_odd_formats(os.path.join(root, "normal"))
        write_junk(os.path.join(root, "covid"))
        return root

    return made_once(tmp_path_factory, "dataset", make)


@pytest.fixture(scope="session")
def trained(tiny_dataset, tmp_path_factory):
    """One 2-epoch training run through train_covid19.main, shared by every test that needs it.

    It also records every batch of images read back from the store, and whether fit had
    returned by then, and whether the training pipeline autotunes: the end-of-training stall
    came from there. Made once for the run (`made_once`)."""
    import train_covid19
    from covid19xray import progress
    from covid19xray.store import ImageStore

    def make(out):
        model, plot, report = (str(out / name) for name in ("covid19.h5", "plot.png",
                                                            "report.json"))
        reads, fit_returned, autotuning = [], [], []
        real_read, real_train = ImageStore.read, train_covid19.train

        def counted_read(self, slots):
            reads.append((len(slots), bool(fit_returned)))
            return real_read(self, slots)

        def train_then_mark(args, head, batches, *rest):
            autotuning.append(batches.batches.options().autotune.enabled)
            history = real_train(args, head, batches, *rest)
            fit_returned.append(True)
            return history

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(progress, "LOG_INTERVAL", 0)  # a progress line for every update
            patch.setattr(ImageStore, "read", counted_read)
            patch.setattr(train_covid19, "train", train_then_mark)
            code, stdout, stderr = run_main(train_covid19.main, [
                "--dataset", tiny_dataset, "--epochs", "2", "--batch-size", "4", "--weights",
                "none", "--seed", "7", "--model", model, "--plot", plot, "--report", report,
                "--cache-dir", str(out / "cache")])  # its own: no other test's entries in it
        return {"code": code, "stdout": stdout, "stderr": stderr, "model": model,
                "plot": plot, "cache": str(out / "cache"), "report": report,
                "dataset": tiny_dataset, "seed": 7, "batch_size": 4, "reads": reads,
                "autotuning": autotuning[0] if autotuning else None}

    return made_once(tmp_path_factory, "trained", make)


@pytest.fixture
def odd_inputs(tmp_path):
    """A flat grey square and uniform noise: what no X-ray looks like."""
    folder = tmp_path / "odd"
    folder.mkdir()
    cv2.imwrite(str(folder / "flat.png"), np.full((512, 512, 3), 128, np.uint8))
    noise = np.random.default_rng(0).integers(0, 256, (300, 400, 3)).astype(np.uint8)
    cv2.imwrite(str(folder / "noise.png"), noise)
    return [str(folder / "flat.png"), str(folder / "noise.png")]


@pytest.fixture(scope="session")
def shipped_model(tmp_path_factory):
    """A model trained for one epoch on the shipped dataset/ with the narrow random VGG16,
    its report.json beside it: what serve_covid19.py's tests serve. Made once for the run."""
    import train_covid19
    from helpers import ROOT

    def make(out):
        model, report = str(out / "covid19.h5"), str(out / "report.json")
        code, stdout, stderr = run_main(train_covid19.main, [
            "--dataset", os.path.join(ROOT, "dataset"), "--epochs", "1", "--weights", "none",
            "--model", model, "--plot", str(out / "plot.png"), "--report", report,
            "--cache-dir", str(out / "cache")])
        assert code == 0, stderr
        return {"model": model, "report": report}

    return made_once(tmp_path_factory, "shipped_model", make)
