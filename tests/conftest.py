"""Fixtures shared by the test files: a messy tiny dataset and one trained model per session.

Helpers (image writers, run_main, snapshot...) live in `helpers.py`, on pytest's pythonpath.
"""

import os

import pytest

from helpers import make_dataset, run_main, write_junk, write_odd_formats


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
    files that are not images or cannot be decoded."""
    root = str(tmp_path_factory.mktemp("dataset"))
    make_dataset(root, per_class=5)
    # swap three normal images for the odd formats, keeping 5 readable images per class
    for name in ["normal-02.jpg", "normal-03.png", "normal-04.jpg"]:
        os.remove(os.path.join(root, "normal", name))
    write_odd_formats(os.path.join(root, "normal"))
    write_junk(os.path.join(root, "covid"))
    return root


@pytest.fixture(scope="session")
def trained(tiny_dataset, tmp_path_factory):
    """One 2-epoch training run through train_covid19.main, shared by every test that needs it."""
    import train_covid19

    out = tmp_path_factory.mktemp("trained")
    model, plot, report = str(out / "covid19.h5"), str(out / "plot.png"), str(out / "report.json")
    code, stdout, stderr = run_main(train_covid19.main, [
        "--dataset", tiny_dataset, "--epochs", "2", "--batch-size", "4", "--weights", "none",
        "--seed", "7", "--model", model, "--plot", plot, "--report", report])
    return {"code": code, "stdout": stdout, "stderr": stderr, "model": model, "plot": plot,
            "report": report, "dataset": tiny_dataset, "seed": 7, "batch_size": 4}
