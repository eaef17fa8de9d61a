"""The probe sets that measure the input check, per kind of input (BENCHMARKS.md).

Every set is a list of image files. Generated kinds are written into `out_dir` by this module
(seeded, the same files every run); the others are read where they are: files that pip packages
ship (matplotlib's and scikit-learn's sample photographs, scikit-image's when it is installed,
pydicom's CT and MR files), and the shared data folders beside the checkout. Cohen's lateral
films and CT slices are not redistributable: they are read in place, for measurement only, and
a missing folder is said, not faked.
"""

import csv
import glob
import hashlib
import os

import cv2
import numpy as np

# Images per generated kind, and films sampled from each of Kaggle's two classes.
GENERATED = 24
KAGGLE_SAMPLE = 300
WORDS = ("the patient was seen in clinic on monday with a cough and mild fever no acute "
         "findings were noted chest radiograph report impression lungs are clear heart size "
         "normal invoice total amount due please remit payment within thirty days page of "
         "section results discussion methods table figure appendix").split()


def _write(folder, name, image):
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    cv2.imwrite(path, image)
    return path


def flat_images(folder, rng):
    """Uniform images: black, white, greys and colours, of several sizes."""
    paths = []
    for i in range(GENERATED):
        size = (int(rng.integers(64, 1024)), int(rng.integers(64, 1024)))
        color = rng.integers(0, 256, 3) if i % 3 else np.repeat(rng.integers(0, 256), 3)
        if i == 0:  # the flat grey square
            size, color = (512, 512), np.array([128, 128, 128])
        image = np.broadcast_to(color.astype(np.uint8), (*size, 3)).copy()
        paths.append(_write(folder, f"flat_{i:02d}.png", image))
    return paths


def noise_images(folder, rng):
    """Uniform and Gaussian noise, grey and colour, at several scales (blurred noise too)."""
    paths = []
    for i in range(GENERATED):
        size = (int(rng.integers(128, 768)), int(rng.integers(128, 768)))
        channels = 3 if i % 2 else 1
        if i % 4 < 2:
            noise = rng.integers(0, 256, (*size, channels))
        else:
            noise = np.clip(rng.normal(128, 40, (*size, channels)), 0, 255)
        noise = noise.astype(np.uint8)
        if i % 3 == 2:  # low-frequency noise: blobs rather than grain
            noise = cv2.GaussianBlur(noise, (0, 0), float(rng.uniform(2, 8)))
        paths.append(_write(folder, f"noise_{i:02d}.png", noise))
    return paths


def gradient_images(folder, rng):
    """Linear and radial gradients, grey and colour."""
    paths = []
    for i in range(GENERATED):
        h, w = int(rng.integers(128, 768)), int(rng.integers(128, 768))
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        if i % 2:
            angle = rng.uniform(0, np.pi)
            t = x * np.cos(angle) + y * np.sin(angle)
        else:
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
            t = np.hypot(x - cx, y - cy)
        t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
        if i % 4 < 2:
            image = np.repeat((255 * t)[..., None], 3, axis=2)
        else:
            a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
            image = a + (b - a) * t[..., None]
        paths.append(_write(folder, f"gradient_{i:02d}.png", image.astype(np.uint8)))
    return paths


def page_images(folder, rng):
    """Rendered pages of text: lines of words in several sizes and fonts, one or two columns,
    black on white or on a grey paper tone, some with a table's rules."""
    paths = []
    fonts = [cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX,
             cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_PLAIN]
    for i in range(GENERATED):
        h, w = int(rng.integers(700, 1400)), int(rng.integers(500, 1000))
        paper = int(rng.integers(200, 256))
        page = np.full((h, w, 3), paper, np.uint8)
        scale = float(rng.uniform(0.4, 1.2))
        font = fonts[i % len(fonts)]
        line = int(32 * scale) + 6
        columns = 2 if i % 3 == 0 else 1
        column_width = (w - 60) // columns
        for c in range(columns):
            y = 50 + (int(40 * scale) if c == 0 and i % 2 else 0)
            while y < h - 40:
                text = " ".join(rng.choice(WORDS, int(rng.integers(3, 12))))
                cv2.putText(page, text, (30 + c * column_width, y), font, scale, (20, 20, 20),
                            1 + int(scale > 0.9), cv2.LINE_AA)
                y += line
                if i % 5 == 4 and rng.random() < 0.2:  # a table's rule
                    cv2.line(page, (30, y - line // 2), (w - 30, y - line // 2), (0, 0, 0), 1)
        page = page[:, :column_width * columns + 60]
        paths.append(_write(folder, f"page_{i:02d}.png", page))
    return paths


def package_photographs():
    """Photographs that pip packages ship: matplotlib's and scikit-learn's, and scikit-image's
    (grey ones among them) when it is installed."""
    import matplotlib
    import sklearn.datasets

    sample = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data")
    paths = [os.path.join(sample, "grace_hopper.jpg"),
             os.path.join(sample, "Minduka_Present_Blue_Pack.png")]
    sklearn_images = os.path.join(os.path.dirname(sklearn.datasets.__file__), "images")
    paths += sorted(glob.glob(os.path.join(sklearn_images, "*.jpg")))
    try:
        import skimage
    except ImportError:
        print("[INFO] scikit-image is not installed: its photographs are not in the probe set")
        return paths
    data = os.path.join(os.path.dirname(skimage.__file__), "data")
    for name in ("astronaut.png", "camera.png", "chelsea.png", "coffee.png", "coins.png",
                 "hubble_deep_field.jpg", "moon.png", "motorcycle_left.png", "rocket.jpg",
                 "retina.jpg", "ihc.png", "brick.png", "grass.png", "gravel.png", "cell.png",
                 "horse.png", "microaneurysms.png", "color.png"):
        if os.path.isfile(os.path.join(data, name)):
            paths.append(os.path.join(data, name))
    return paths


def package_pages():
    """Scanned text that scikit-image ships (`page.png`, `text.png`), when installed."""
    try:
        import skimage
    except ImportError:
        return []
    data = os.path.join(os.path.dirname(skimage.__file__), "data")
    return [os.path.join(data, name) for name in ("page.png", "text.png")
            if os.path.isfile(os.path.join(data, name))]


def pydicom_slices():
    """pydicom's bundled CT and MR slices (no download: bundled names only)."""
    from pydicom.data import get_testdata_file

    return [get_testdata_file(name) for name in ("CT_small.dcm", "693_J2KI.dcm", "MR_small.dcm",
                                                  "examples_overlay.dcm")]


def _digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def cohen_other_views(shared):
    """Cohen's lateral films and CT slices, by their metadata rows; ({}, reason) if absent."""
    folder = os.path.join(shared, "data", "cohen-2020-06-other-views")
    metadata = os.path.join(folder, "metadata.csv")
    if not os.path.isfile(metadata):
        return {}, f"{folder} is not here: no lateral films or CT slices measured"
    kinds = {"lateral films (Cohen)": [], "CT slices (Cohen)": []}
    with open(metadata, newline="") as f:
        for row in csv.DictReader(f):
            path = os.path.join(folder, "images", row["filename"])
            if not os.path.isfile(path):
                continue
            if row["modality"] == "CT":
                kinds["CT slices (Cohen)"].append(path)
            elif row["view"].strip().upper() == "L":
                kinds["lateral films (Cohen)"].append(path)
    return kinds, None


def frontal_films(shared, repo, seed=42):
    """Frontal chest films: external/ by source, Cohen's PA/AP films that dataset/ does not
    hold, and samples of Kaggle's normal and pneumonia films that dataset/ does not hold."""
    from covid19xray.images import list_images

    in_dataset = {_digest(path) for path in list_images(os.path.join(repo, "dataset"))}
    kinds = {}
    external = os.path.join(repo, "external")
    with open(os.path.join(external, "manifest.csv"), newline="") as f:
        for row in csv.DictReader(f):
            name = f"external/ ({row['source']}, {row['class']})"
            kinds.setdefault(name, []).append(os.path.join(external, row["file"]))
    cohen = os.path.join(shared, "data", "cohen-2020-06-ccby")
    if os.path.isdir(cohen):
        films = []
        with open(os.path.join(cohen, "metadata.csv"), newline="") as f:
            for row in csv.DictReader(f):
                path = os.path.join(cohen, "images", row["filename"])
                if (row["modality"] == "X-ray" and row["view"].startswith(("PA", "AP"))
                        and os.path.isfile(path) and _digest(path) not in in_dataset):
                    films.append(path)
        kinds["Cohen PA/AP not in dataset/"] = films
    kaggle = os.path.join(shared, "data", "kaggle-chest-xray-224", "chest_xray")
    rng = np.random.default_rng(seed)
    for label in ("NORMAL", "PNEUMONIA"):
        films = sorted(glob.glob(os.path.join(kaggle, "*", label, "*.jpeg")))
        films = [path for path in films if os.path.basename(path) not in
                 {os.path.basename(p) for p in list_images(os.path.join(repo, "dataset"))}]
        if films:
            picked = rng.choice(len(films), min(KAGGLE_SAMPLE, len(films)), replace=False)
            kinds[f"Kaggle {label.lower()}"] = [films[k] for k in sorted(picked)]
    return kinds


def probe_sets(shared, repo, out_dir, seed=2026):
    """{kind: [image files]}, every kind of input the input check is measured on, and the
    reasons any kind is missing."""
    rng = np.random.default_rng(seed)
    sets = {
        "flat": flat_images(os.path.join(out_dir, "flat"), rng),
        "noise": noise_images(os.path.join(out_dir, "noise"), rng),
        "gradients": gradient_images(os.path.join(out_dir, "gradients"), rng),
        "pages": page_images(os.path.join(out_dir, "pages"), rng) + package_pages(),
        "photographs": package_photographs(),
        "CT and MR (pydicom)": pydicom_slices(),
    }
    other, missing = cohen_other_views(shared)
    sets.update(other)
    sets.update(frontal_films(shared, repo))
    return sets, [missing] if missing else []
