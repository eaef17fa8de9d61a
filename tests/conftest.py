"""Shared fixtures: small synthetic X-ray folders written at run time, and one trained model.

No real image or model is ever committed; every test makes what it needs in a temporary folder.
"""

import contextlib
import io
import os
import sys

import cv2
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def write_image(path, seed, gray=False, size=(260, 300)):
    """Write a distinct small synthetic 'X-ray' (noise plus a bright blob) to `path`.

    The format follows the extension (.jpg, .png, ...); `gray` writes a single-channel file.
    """
    rng = np.random.default_rng(seed)
    height, width = size
    image = rng.integers(0, 120, size=(height, width, 3), dtype=np.uint8)
    center = (int(rng.integers(width // 4, 3 * width // 4)),
              int(rng.integers(height // 4, 3 * height // 4)))
    cv2.circle(image, center, int(rng.integers(min(size) // 10, min(size) // 5)) + 1,
               (230, 230, 230), -1)
    if gray:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(str(path), image)
    return str(path)


def make_dataset(root, per_class=5, classes=("covid", "normal")):
    """`root/<class>/` with `per_class` images each: mixed JPEG/PNG, some grayscale, mixed sizes."""
    paths = []
    for c, name in enumerate(classes):
        for i in range(per_class):
            ext = ".png" if i % 2 else ".jpg"
            size = (200 + 20 * i, 240 - 10 * i)
            paths.append(write_image(os.path.join(root, name, f"{name}-{i:02d}{ext}"),
                                     seed=100 * c + i, gray=(i % 3 == 0), size=size))
    return sorted(paths)


def write_odd_formats(folder, seed=0):
    """Images OpenCV must turn into 3-channel 8-bit: 16-bit gray PNG, RGBA PNG, palette PNG."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    paths = {"16bit": os.path.join(folder, "odd-16bit.png"),
             "rgba": os.path.join(folder, "odd-rgba.png"),
             "palette": os.path.join(folder, "odd-palette.png")}
    assert cv2.imwrite(paths["16bit"], rng.integers(0, 65535, (50, 60), dtype=np.uint16))
    assert cv2.imwrite(paths["rgba"], rng.integers(0, 255, (50, 60, 4), dtype=np.uint8))
    Image.fromarray(rng.integers(0, 255, (50, 60), dtype=np.uint8)).convert("P").save(
        paths["palette"])
    return paths


def write_junk(folder):
    """Files a real X-ray folder holds besides X-rays. Returns the undecodable 'images'."""
    os.makedirs(folder, exist_ok=True)
    for name, content in [("notes.txt", b"not an image"), (".DS_Store", b"\0\0\0\1Bud1"),
                          ("Thumbs.db", b"\xd0\xcf\x11\xe0")]:
        with open(os.path.join(folder, name), "wb") as f:
            f.write(content)
    png = cv2.imencode(".png", np.full((40, 40, 3), 128, np.uint8))[1].tobytes()
    broken = {"empty.jpg": b"", "truncated.png": png[:len(png) // 2],
              "text.jpg": b"this is not a JPEG, it is text\n"}
    for name, content in broken.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(content)
    return sorted(os.path.join(folder, name) for name in broken)


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


def run_main(main, argv):
    """Call a script's main(argv); return (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


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
