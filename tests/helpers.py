"""What the tests share: data they write at run time, and ways to run and check the scripts.

No real image or model is committed for the tests; each one makes what it needs in a temporary
folder: synthetic X-ray folders with the junk real folders hold, Cohen-shaped checkouts with
every version of `metadata.csv`, and Kaggle-shaped trees.
"""

import contextlib
import functools
import hashlib
import io
import os
import pathlib
import random
import re
import shutil
import subprocess
import sys
import time
import urllib.parse

import cv2
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# VGG16's filters per block; the tests' stand-in has an eighth of each.
VGG16_FILTERS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


# ---------------------------------------------------------------------------------------------
# A narrow VGG16
# ---------------------------------------------------------------------------------------------


def narrow_vgg16(input_shape=(224, 224, 3), width=8):
    """VGG16's topology and layer names with `1/width` of its filters, He-initialised.

    Where the number of filters is not what a test checks, this stand-in runs every code path a
    random-weights VGG16 runs (the crops, the head, Grad-CAM's last convolution, the saved
    file) for about 1/width**2 of the arithmetic: forward passes are the suite's main cost.
    He initialisation keeps a signal alive through its 13 ReLU layers, as ImageNet weights do.
    """
    import keras

    x = inputs = keras.Input(shape=input_shape)
    for block, filters in enumerate(VGG16_FILTERS, start=1):
        for conv, count in enumerate(filters, start=1):
            x = keras.layers.Conv2D(count // width, 3, padding="same", activation="relu",
                                    kernel_initializer="he_normal",
                                    name=f"block{block}_conv{conv}")(x)
        x = keras.layers.MaxPooling2D(2, strides=2, name=f"block{block}_pool")(x)
    return keras.Model(inputs, x, name="vgg16")


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------


def computed_outputs(extract, store, paths, batch_size, transform=None, epochs=1, cache=None):
    """The first output of `extract` for the images at `paths` of `store`, through one
    `Extractor` (covid19xray.extractor), as the scripts compute it: (epochs, len(paths), size)."""
    from covid19xray.extractor import Extractor
    from covid19xray.transforms import UNCHANGED

    return Extractor(extract, batch_size, transform or UNCHANGED,
                     () if cache is None else (cache,)).outputs_per_epoch(store, paths, epochs)[0]


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
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    ok, encoded = cv2.imencode(os.path.splitext(str(path))[1], image)
    assert ok
    with open(path, "wb") as f:  # not cv2.imwrite: it cannot take every file name
        f.write(encoded.tobytes())
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


def small_dataset(root, counts, size=(30, 30)):
    """`root/<class>/<i>.png` for each class and count of `counts`."""
    for c, (name, n) in enumerate(counts.items()):
        for i in range(n):
            write_image(os.path.join(root, name, f"{i}.png"), seed=10 * c + i, size=size)
    return str(root)


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


# ---------------------------------------------------------------------------------------------
# Running scripts and checking what they did
# ---------------------------------------------------------------------------------------------


def made_once(tmp_path_factory, name, make):
    """What `make(folder)` returns (JSON), made once for the whole test run: by the first
    pytest-xdist worker that asks, in a folder every worker sees, under a lock; the others wait
    for it and read it. For the session's costly fixtures, which each worker made anew.
    Tests only read what is made so."""
    import fcntl
    import json

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # this run's folder, shared by its workers (not by other runs)
    folder, made = root / name, root / f"{name}.json"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not made.exists():
            shutil.rmtree(folder, ignore_errors=True)  # a half-made one, if a worker crashed
            folder.mkdir()
            made.with_suffix(".part").write_text(json.dumps(make(folder)))
            made.with_suffix(".part").rename(made)
        return json.loads(made.read_text())


def run_main(main, argv):
    """Call a script's main(argv); return (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def snapshot(*folders):
    """{path: (sha256, mtime in ns)} of every file under `folders` (a missing folder has none)."""
    result = {}
    for folder in folders:
        for base, _, files in os.walk(folder):
            for name in files:
                path = os.path.join(base, name)
                if os.path.islink(path) or not os.path.isfile(path):  # never read unbounded
                    result[path] = ("not a file", os.lstat(path).st_mode,
                                    os.readlink(path) if os.path.islink(path) else None)
                    continue
                with open(path, "rb") as f:
                    result[path] = (hashlib.sha256(f.read()).hexdigest(),
                                    os.stat(path).st_mtime_ns)
    return result


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


# A file name that is not valid UTF-8, as Python hands it over: 'x-\udcff\udcfe.png'
NOT_UTF8 = os.fsdecode(b"x-\xff\xfe.png")


def terminate_here(*args, **kwargs):
    """Stands in for a step of a script: SIGTERM arrives while it runs."""
    import signal

    os.kill(os.getpid(), signal.SIGTERM)
    raise AssertionError("SIGTERM did not stop the run")


def assert_no_tensorflow_log_lines(stderr):
    """No line of TensorFlow's C++ start-up logging (`I0000 ...`, `E0000 ... cuInit`, absl's
    notice) in a script's stderr: covid19xray.cli.import_tensorflow keeps them off."""
    assert not re.search(r"^[IWE][0-9]{4} ", stderr, re.M), stderr
    assert "absl::InitializeLog" not in stderr, stderr


def progress_counts(stderr, what):
    """The (done, total) of the progress lines of the step `what` in a log's stderr, in order,
    a repeat of the same count (the line a bar prints when it closes) counted once; after
    checking that every progress line is plain text (no carriage return, no colour)."""
    assert "\r" not in stderr and "\x1b" not in stderr
    counts = [(int(done), int(total)) for done, total in
              re.findall(rf"^{re.escape(what)}: +\d+%\|[^|]*\| (\d+)/(\d+) ", stderr, re.M)]
    return [count for k, count in enumerate(counts) if k == 0 or count != counts[k - 1]]


def assert_one_line_error(code, err, script, *phrases, exit_code=1, warnings=0):
    """The run failed with `exit_code` and one error line, after `warnings` warning lines."""
    assert code == exit_code, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 + warnings, err
    assert all(line.startswith("[WARNING] ") for line in lines[:-1])
    assert lines[-1].startswith(f"{script}: error: ")
    for phrase in phrases:
        assert phrase in lines[-1]


# ---------------------------------------------------------------------------------------------
# Cohen's collection: every version of metadata.csv
# ---------------------------------------------------------------------------------------------

HEADERS = {
    "march-2020": "Patientid,offset,sex,age,finding,survival,view,date,location,filename,doi, "
                  "url,license,notes",
    "april-2020": "Patientid,offset,sex,age,finding,survival,view,modality,date,location,"
                  "filename,doi, url,license,clinical notes,other notes,",
    "june-2020": "patientid,offset,sex,age,finding,survival,intubated,intubation_present,"
                 "went_icu,in_icu,needed_supplemental_O2,extubated,temperature,pO2_saturation,"
                 "leukocyte_count,neutrophil_count,lymphocyte_count,view,modality,date,location,"
                 "folder,filename,doi,url,license,clinical_notes,other_notes,",
    "current": "patientid,offset,sex,age,finding,RT_PCR_positive,survival,intubated,"
               "intubation_present,went_icu,in_icu,needed_supplemental_O2,extubated,temperature,"
               "pO2_saturation,leukocyte_count,neutrophil_count,lymphocyte_count,view,modality,"
               "date,location,folder,filename,doi,url,license,clinical_notes,other_notes,",
}

# (finding in the flat 2020 style, finding in today's hierarchical style, view, filename)
ROWS = [
    ("COVID-19", "Pneumonia/Viral/COVID-19", "PA", "a.jpg"),           # copied
    ("COVID-19", "Pneumonia/Viral/COVID-19", "AP", "b.jpg"),           # wrong view
    ("SARS", "Pneumonia/Viral/SARS", "PA", "c.jpg"),                   # other finding
    ("COVID-19, ARDS", "Pneumonia/Viral/COVID-19, ARDS", " pa ", "d.png"),  # copied
    ("COVID-19", "Pneumonia/Viral/COVID-19", "PA", "missing.jpg"),     # file missing
    ("COVID-19", "Pneumonia/Viral/COVID-19", "PA", "a.jpg"),           # listed twice
    ("COVID-19", "Pneumonia/Viral/COVID-19", "PA", "../outside.jpg"),  # refused
    ("MERS-CoV", "Pneumonia/Viral/MERS-CoV", "PA", "e.jpg"),           # other finding
    ("Streptococcus", "Pneumonia/Bacterial/Streptococcus", "PA", "f.jpg"),
    ("No Finding", "No Finding", "PA", "h.jpg"),
    ("covid-19", "Pneumonia/Viral/COVID-19", "PA", "g.jpeg"),          # copied; notes not UTF-8
]
IMAGES = ["a.jpg", "b.jpg", "c.jpg", "d.png", "e.jpg", "f.jpg", "g.jpeg", "h.jpg"]


def write_collection(root, version, rows=ROWS, images=IMAGES, volume=True):
    """A Cohen-shaped checkout: metadata.csv with `version`'s header, images/, volumes/."""
    header = HEADERS[version]
    columns = [name.strip().lower() for name in header.split(",")]
    hierarchical = version == "current"
    lines = [header.encode()]
    table = [(f2 if hierarchical else f1, view, name) for f1, f2, view, name in rows]
    if "folder" in columns and volume:  # since June 2020: a row stored under volumes/
        table.append(("Pneumonia/Viral/COVID-19" if hierarchical else "COVID-19", "PA",
                      "v.jpg", "volumes"))
    for i, (finding, view, name, *folder) in enumerate(table):
        values = [b""] * len(columns)
        values[columns.index("patientid")] = str(i).encode()
        values[columns.index("finding")] = f'"{finding}"'.encode()
        values[columns.index("view")] = view.encode()
        values[columns.index("filename")] = name.encode()
        if "folder" in columns:
            values[columns.index("folder")] = (folder[0] if folder else "images").encode()
        notes = [c for c in columns if "notes" in c][0]
        # a Latin-1 byte in free text, as in real copies of the file
        values[columns.index(notes)] = b"\"patient from S\xe3o Paulo, 'note', with comma\""
        lines.append(b",".join(values))
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "metadata.csv"), "wb") as f:
        f.write(b"\r\n".join(lines) + b"\r\n")
    for k, name in enumerate(images):
        write_image(os.path.join(root, "images", name), seed=k, size=(32, 32))
    if "folder" in columns:
        write_image(os.path.join(root, "volumes", "v.jpg"), seed=99, size=(32, 32))
    # a file outside the collection that the `../outside.jpg` row points at: never read
    write_image(os.path.join(os.path.dirname(root), "outside.jpg"), seed=50, size=(32, 32))
    return root


# ---------------------------------------------------------------------------------------------
# Kaggle's Chest X-Ray Images (Pneumonia)
# ---------------------------------------------------------------------------------------------

# Kaggle's file names: NORMAL images are IM-*/NORMAL2-IM-*, PNEUMONIA ones person*_bacteria|virus_*
KAGGLE_COUNTS = {("train", "NORMAL"): 30, ("train", "PNEUMONIA"): 12, ("val", "NORMAL"): 4,
                 ("val", "PNEUMONIA"): 4, ("test", "NORMAL"): 6, ("test", "PNEUMONIA"): 8}


def kaggle_name(split, label, i):
    if label == "NORMAL":
        return f"IM-{i:04d}-0001.jpeg" if i % 2 else f"NORMAL2-IM-{i:04d}-0001.jpeg"
    return f"person{i}_{'bacteria' if i % 2 else 'virus'}_{i + 7}.jpeg"


def write_kaggle(root):
    """A Kaggle-shaped `chest_xray/` tree, with the macOS debris the zip carries."""
    for (split, label), count in KAGGLE_COUNTS.items():
        for i in range(count):
            write_image(os.path.join(root, split, label, kaggle_name(split, label, i)),
                        seed=i, gray=True, size=(24, 24))
        with open(os.path.join(root, split, label, ".DS_Store"), "wb") as f:
            f.write(b"\0\0")
        with open(os.path.join(root, split, label, "._IM-0001-0001.jpeg"), "wb") as f:
            f.write(b"AppleDouble")  # a resource fork with an image's name
    write_image(os.path.join(root, "__MACOSX", "train", "NORMAL", "IM-9999-0001.jpeg"), seed=1,
                size=(24, 24))
    return root


def expected_kaggle_sample(split, label, n, seed=42):
    """The documented sample: sorted names, shuffled by random.Random(seed), the first n."""
    names = sorted(kaggle_name(split, label, i) for i in range(KAGGLE_COUNTS[split, label]))
    random.Random(seed).shuffle(names)
    return sorted(names[:n])


def write_huge_png(path, width, height):
    """A valid grey PNG of width x height pixels, all black, written row by row: a few hundred
    KB on disk however many pixels it claims (a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    compressor, row, parts = zlib.compressobj(9), b"\0" * (width + 1), []
    for _ in range(height):
        parts.append(compressor.compress(row))
    parts.append(compressor.flush())
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)))
        f.write(chunk(b"IDAT", b"".join(parts)))
        f.write(chunk(b"IEND", b""))
    return str(path)


# ---------------------------------------------------------------------------------------------
# Radiology files: DICOM and 16-bit images, made from an 8-bit grey X-ray
# ---------------------------------------------------------------------------------------------

# DICOM's "Computed Radiography Image Storage": what a CR chest film is stored as
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"


def to_12_bits(grey):
    """8-bit grey values spread over 12 bits, as a detector would store them."""
    return np.round(grey.astype(np.float64) * 4095 / 255).astype(np.uint16)


def write_png16(path, values):
    """`values` (uint16) as a 16-bit grey PNG."""
    ok, encoded = cv2.imencode(".png", values.astype(np.uint16))
    assert ok
    with open(path, "wb") as f:
        f.write(encoded.tobytes())
    return str(path)


def write_dicom(path, stored, photometric="MONOCHROME2", bits_stored=12, rescale=None,
                window=None, jpeg2000=False, frames=1):
    """A one-frame CR DICOM file holding `stored` (uint16 values) as they are.

    `rescale` is (slope, intercept), `window` is (center, width); `jpeg2000` compresses the
    pixels losslessly (Pillow's OpenJPEG encoder, encapsulated as DICOM wants); `frames` > 1
    repeats the image to make a multi-frame file.
    """
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid

    os.makedirs(os.path.dirname(os.path.abspath(str(path))), exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CR_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEG2000Lossless if jpeg2000 else ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = CR_IMAGE_STORAGE, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "CR", "test"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 0
    if rescale:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    if frames > 1:
        ds.NumberOfFrames = frames
    values = stored.astype(np.uint16)
    if jpeg2000:
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(values).save(buffer, "JPEG2000", irreversible=False, no_jp2=True)
        ds.PixelData = encapsulate([buffer.getvalue()] * frames)
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = values.tobytes() * frames
    ds.save_as(str(path), enforce_file_format=True)
    assert pydicom.dcmread(str(path)).file_meta.TransferSyntaxUID == meta.TransferSyntaxUID
    return str(path)


def shipped_xray():
    """The first normal X-ray of the shipped dataset: a real 8-bit grey JPEG."""
    folder = os.path.join(ROOT, "dataset", "normal")
    return os.path.join(folder, sorted(os.listdir(folder))[0])


def write_encodings(folder):
    """{description: path}: one real X-ray as its 8-bit JPEG and as the radiology files it
    could have come as, each holding the same grey levels."""
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    jpeg = shipped_xray()
    with Image.open(jpeg) as image:
        grey = np.asarray(image.convert("L"))
    twelve = to_12_bits(grey)
    join = functools.partial(os.path.join, folder)
    return {
        "8-bit JPEG": jpeg,
        "12-bit in a 16-bit PNG": write_png16(join("twelve.png"), twelve),
        "16-bit PNG": write_png16(join("sixteen.png"), grey.astype(np.uint16) * 257),
        # MONOCHROME1 stores white as 0; slope and intercept move every value
        "12-bit DICOM, MONOCHROME1, slope and intercept": write_dicom(
            join("monochrome1.dcm"), 4095 - twelve, "MONOCHROME1", rescale=(2, -1000)),
        # values 1000-5095 and a window whose edges are exactly those
        "16-bit DICOM, windowed": write_dicom(join("windowed.dcm"), twelve + 1000,
                                              bits_stored=16, window=(3048, 4096)),
        # named as many DICOM exports are: no extension
        "12-bit DICOM, JPEG 2000": write_dicom(join("IM0001"), twelve, jpeg2000=True),
    }


def write_mpeg2_dicom(path):
    """A DICOM file whose pixels are in a transfer syntax no installed decoder reads."""
    import pydicom
    from pydicom.encaps import encapsulate

    ds = pydicom.dcmread(write_dicom(path, np.zeros((8, 8), np.uint16)))
    ds.file_meta.TransferSyntaxUID = pydicom.uid.MPEG2MPML
    ds.PixelData = encapsulate([b"\0" * 64])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def write_refused_radiology_files(folder):
    """{file: the one-line reason it is refused}: DICOM and TIFF files no viewer could show
    as one X-ray, or no decoder here can read."""
    os.makedirs(folder, exist_ok=True)
    values = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    truncated = write_dicom(os.path.join(folder, "truncated.dcm"), values)
    with open(truncated, "r+b") as f:
        f.truncate(os.path.getsize(truncated) // 2)
    ok, encoded = cv2.imencode(".tiff", np.random.default_rng(0).random((30, 30), np.float32))
    assert ok
    with open(os.path.join(folder, "float.tiff"), "wb") as f:
        f.write(encoded.tobytes())
    return {
        write_mpeg2_dicom(os.path.join(folder, "mpeg2.dcm")):
            "its transfer syntax 'MPEG2 Main Profile / Main Level' cannot be decoded by the "
            "installed DICOM decoders (pydicom, python-gdcm)",
        write_dicom(os.path.join(folder, "cine.dcm"), values, frames=3):
            "3 frames; a chest radiograph has one",
        truncated: "its pixel data cannot be decoded (Explicit VR Little Endian: The number of "
                   "bytes of pixel data is less than expected",
        os.path.join(folder, "float.tiff"):
            "floating-point pixels, whose grey scale cannot be known; save it with 8- or "
            "16-bit integer pixels",
    }


# ---------------------------------------------------------------------------------------------
# A web server on 127.0.0.1
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def serve(root, missing=(), html=(), stall=(), cut=()):
    """Serve the folder `root` over HTTP on 127.0.0.1 (a free port) while the block runs.

    Yields (base URL, the list of paths requested). Paths in `missing` answer 404; paths in
    `html` answer 200 with an HTML error page, as some servers and proxies do; paths in `stall`
    answer nothing for 1.5 s; paths in `cut` send half their bytes, then close the connection.
    """
    import http.server
    import threading

    requested = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            path = urllib.parse.unquote(self.path.split("?")[0]).lstrip("/")
            requested.append(path)
            if path in stall:
                time.sleep(1.5)
                self.close_connection = True
            elif path in cut:
                data = (pathlib.Path(root) / path).read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[:len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
            elif path in missing:
                self.send_error(404)
            elif path in html:
                body = b"<!DOCTYPE html><html><body>Rate limit exceeded</body></html>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            else:
                super().do_GET()

        def log_message(self, *args):  # quiet
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    server.daemon_threads, server.block_on_close = True, False  # a stalled answer waits for no one
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", requested
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------------------------------------
# Damaged files: a DICOM header edited byte by byte, and a seeded mutator for fuzzing
# ---------------------------------------------------------------------------------------------

# The header elements the DICOM reader uses: keyword -> (group, element, VR)
DICOM_HEADER_ELEMENTS = {
    "Rows": (0x0028, 0x0010, b"US"), "Columns": (0x0028, 0x0011, b"US"),
    "BitsAllocated": (0x0028, 0x0100, b"US"), "BitsStored": (0x0028, 0x0101, b"US"),
    "PixelRepresentation": (0x0028, 0x0103, b"US"), "SamplesPerPixel": (0x0028, 0x0002, b"US"),
    "PhotometricInterpretation": (0x0028, 0x0004, b"CS"),
    "WindowCenter": (0x0028, 0x1050, b"DS"), "WindowWidth": (0x0028, 0x1051, b"DS"),
    "RescaleIntercept": (0x0028, 0x1052, b"DS"), "RescaleSlope": (0x0028, 0x1053, b"DS"),
}
# What a damaged file may hold instead of a value, by the kind of value
DAMAGED_VALUES = {b"US": [b"\x40\x00\x40\x00", b"", b"\xff\xff", b"\x00\x00", b"\x07\x00\x00\x00"],
                  b"CS": [b"MONOCHROME2\\RGB ", b"", b"\xff\xfe", b"YBR_FULL"],
                  b"DS": [b"abc ", b"", b"1e999 ", b"nan ", b"1\\2\\3 ", b"-0", b"\xff\xfe"]}


def splice_dicom_element(data, keyword, value):
    """`data` (an explicit VR little endian DICOM file) with `keyword`'s value replaced by the
    bytes `value` (its length field made to match): what a few changed header bytes do."""
    import struct

    group, element, vr = DICOM_HEADER_ELEMENTS[keyword]
    tag = struct.pack("<HH", group, element) + vr
    at = data.index(tag, 132)
    length = struct.unpack("<H", data[at + 6:at + 8])[0]
    if len(value) % 2:  # DICOM values have even lengths
        value += b" "
    return data[:at + 6] + struct.pack("<H", len(value)) + value + data[at + 8 + length:]


def fuzz_seed_files(folder):
    """{name: bytes}: one small file of each kind the project reads: JPEG, PNG 8- and 16-bit,
    TIFF, and DICOM uncompressed (windowed and rescaled), JPEG 2000, RLE and JPEG baseline
    (the last two are pydicom's bundled test files)."""
    from pydicom.data import get_testdata_file

    grey = cv2.resize(cv2.imread(shipped_xray(), cv2.IMREAD_GRAYSCALE), (96, 96))
    encoded = {ext: cv2.imencode(ext, image)[1].tobytes() for ext, image in [
        (".jpg", grey), (".png", grey), (".tif", cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR))]}
    twelve = to_12_bits(grey)
    os.makedirs(folder, exist_ok=True)
    paths = {
        "png16.png": write_png16(os.path.join(folder, "png16.png"), twelve),
        "plain.dcm": write_dicom(os.path.join(folder, "plain.dcm"), twelve + 100,
                                 rescale=(1, -100), window=(2048, 4096)),
        "j2k.dcm": write_dicom(os.path.join(folder, "j2k.dcm"), twelve, jpeg2000=True),
        "rle.dcm": get_testdata_file("MR_small_RLE.dcm"),
        "ybr.dcm": get_testdata_file("SC_rgb_jpeg.dcm"),
    }
    files = {f"eight{ext}": data for ext, data in encoded.items()}
    for name, path in paths.items():
        with open(path, "rb") as f:
            files[name] = f.read()
    return files


def mutate(data, rng, header_bytes=1024):
    """A damaged copy of `data`, drawn by `rng`: bits flipped, cut short, a block zeroed or
    overwritten, a block repeated, or (most damage matters there) bytes of the header
    changed; for explicit-VR DICOM also a header value replaced (`splice_dicom_element`)."""
    data = bytearray(data)
    kind = int(rng.integers(7))
    if kind == 6 and data[128:132] == b"DICM":
        keyword = list(DICOM_HEADER_ELEMENTS)[int(rng.integers(len(DICOM_HEADER_ELEMENTS)))]
        values = DAMAGED_VALUES[DICOM_HEADER_ELEMENTS[keyword][2]]
        with contextlib.suppress(ValueError):  # an element this file does not have
            return splice_dicom_element(bytes(data), keyword,
                                        values[int(rng.integers(len(values)))])
        kind = 0
    if kind in (0, 6):  # a few bits flipped anywhere
        for at in rng.integers(0, len(data), size=int(rng.integers(1, 9))):
            data[at] ^= 1 << int(rng.integers(8))
    elif kind == 1:  # cut short
        data = data[:int(rng.integers(0, len(data)))]
    elif kind == 2:  # a zeroed block
        start, length = int(rng.integers(0, len(data))), int(rng.integers(1, 4096))
        data[start:start + length] = bytes(len(data[start:start + length]))
    elif kind == 3:  # random bytes over a block
        start = int(rng.integers(0, len(data)))
        block = data[start:start + int(rng.integers(1, 256))]
        data[start:start + len(block)] = rng.integers(0, 256, len(block), dtype=np.uint8).tobytes()
    elif kind == 4:  # a block repeated
        start = int(rng.integers(0, len(data)))
        data[start:start] = data[start:start + int(rng.integers(1, 2048))]
    else:  # bytes of the header changed
        for at in rng.integers(0, min(header_bytes, len(data)), size=int(rng.integers(1, 5))):
            data[at] = int(rng.integers(256))
    return bytes(data)


def mutate_text(data, rng):
    """A damaged copy of a CSV file's bytes: `mutate`'s damage, or a NUL, a stray quote, a
    non-UTF-8 byte, or a very long field put in somewhere."""
    kind = int(rng.integers(8))
    if kind < 4:
        return mutate(data, rng, header_bytes=200)
    at = int(rng.integers(0, len(data) + 1))
    insert = [b"\0", b'"', b"\xff\xfe", b"x" * 200_000][kind - 4]
    return data[:at] + insert + data[at:]


# ---------------------------------------------------------------------------------------------
# NIH ChestX-ray14's layout
# ---------------------------------------------------------------------------------------------

NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
              "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
# (image, finding labels, follow-up, patient, age, view): children, a lateral view, repeat
# films of one patient, other findings, and plain adult "No Finding" films
NIH_ROWS = [
    ("00000001_000.png", "No Finding", 0, 1, 45, "PA"),
    ("00000001_001.png", "No Finding", 1, 1, 46, "PA"),      # a repeat: not the first
    ("00000002_000.png", "No Finding", 0, 2, 9, "PA"),       # a child
    ("00000003_000.png", "Effusion", 0, 3, 60, "PA"),        # another finding
    ("00000003_001.png", "No Finding", 1, 3, 60, "PA"),      # patient 3's first No Finding
    ("00000004_000.png", "No Finding", 0, 4, 30, "LL"),      # a lateral view
    ("00000005_000.png", "No Finding", 0, 5, 70, "AP"),
    ("00000006_000.png", "Infiltration|Effusion", 0, 6, 50, "PA"),
    ("00000007_000.png", "No Finding", 0, 7, 18, "PA"),      # 18: an adult
    ("00000008_000.png", "No Finding", 0, 8, 17, "PA"),      # 17: a child
    ("00000009_001.png", "No Finding", 1, 9, 33, "AP"),
    ("00000009_002.png", "No Finding", 2, 9, 33, "PA"),      # the first PA of patient 9
] + [(f"{p:08d}_000.png", "No Finding", 0, p, 20 + p, "PA") for p in range(10, 20)]
# what the default selection (No Finding, 18 or more, PA or AP, the first per patient) takes
NIH_SELECTED = (["00000001_000.png", "00000003_001.png", "00000005_000.png", "00000007_000.png",
                 "00000009_001.png"] + [f"{p:08d}_000.png" for p in range(10, 20)])
NIH_SELECTED_PA = (["00000001_000.png", "00000003_001.png", "00000007_000.png",
                    "00000009_002.png"] + [f"{p:08d}_000.png" for p in range(10, 20)])


def write_nih(root, archives=True, rows=NIH_ROWS):
    """An NIH-shaped download: `Data_Entry_2017_v2020.csv` and the films split over
    `images_001/images/` and `images_002/images/` (NIH's archives), or `Data_Entry_2017.csv`
    and one `images/` folder."""
    lines = [NIH_HEADER] + [f"{name},{finding},{follow_up},{patient},{age},M,{view},2048,2500,"
                            "0.143,0.143" for name, finding, follow_up, patient, age, view in rows]
    os.makedirs(root, exist_ok=True)
    label_file = "Data_Entry_2017_v2020.csv" if archives else "Data_Entry_2017.csv"
    with open(os.path.join(root, label_file), "w") as f:
        f.write("\n".join(lines) + "\n")
    for k, (name, *_) in enumerate(rows):
        folder = os.path.join(f"images_{1 + k % 2:03d}", "images") if archives else "images"
        write_image(os.path.join(root, folder, name), seed=300 + k, gray=True, size=(40, 40))
    return root


def expected_nih_sample(selected, n, seed=42):
    """The sampler's rule: sorted, shuffled with random.Random(seed), the first n, sorted."""
    order = sorted(selected)
    random.Random(seed).shuffle(order)
    return sorted(order[:n])


def readable_image(path):
    """Whether the project's loader reads `path` as an image."""
    from covid19xray.images import NotAnImage, load_xray

    try:
        load_xray(path)
        return True
    except NotAnImage:
        return False


@contextlib.contextmanager
def read_only(folder):
    """`folder` made unwritable for the block, also for root (who ignores permission bits):
    chmod, and the immutable attribute where chattr can set it; skips the test where neither
    holds."""
    os.chmod(folder, 0o555)
    immutable = subprocess.run(["chattr", "+i", folder], capture_output=True).returncode == 0 \
        if shutil.which("chattr") else False
    try:
        probe = os.path.join(folder, ".probe")
        try:
            open(probe, "w").close()
            os.remove(probe)
            pytest.skip("cannot make a folder read-only here (root without chattr)")
        except OSError:
            pass
        yield folder
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", folder], check=True)
        os.chmod(folder, 0o755)


def parse_report(stdout):
    """The confusion matrix and the three metric lines the tutorial prints."""
    rows = re.findall(r"^\s*\[+\s*(\d+)\s+(\d+)\s*\]+\s*$", stdout, re.M)
    # the tutorial's "acc: 0.9000", now followed by " (95% CI 0.60-0.98)"
    metrics = dict(re.findall(r"^(acc|sensitivity|specificity): (\d\.\d{4}) \(95% CI ", stdout,
                              re.M))
    return np.array(rows, dtype=int), {k: float(v) for k, v in metrics.items()}


def radiography(root, counts):
    """The COVID-19 Radiography Database's layout: `<class>/images/<name>.png` and a lung mask
    of the same name in `<class>/masks/`."""
    for c, (name, n) in enumerate(counts.items()):
        for i in range(n):
            write_image(os.path.join(root, name, "images", f"{name}-{i}.png"), seed=10 * c + i,
                        size=(30, 30))
            write_image(os.path.join(root, name, "masks", f"{name}-{i}.png"), seed=500 + i,
                        gray=True, size=(30, 30))
    return str(root)


# ---------------------------------------------------------------------------------------------
# serve_covid19.py in its own process
# ---------------------------------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update"]


def photograph():
    """A colour photograph scikit-learn ships (a pagoda): what no chest film looks like."""
    import sklearn.datasets

    return os.path.join(os.path.dirname(sklearn.datasets.__file__), "images", "china.jpg")


def start_server(argv, cwd, env=None, timeout=120):
    """serve_covid19.py with `argv` in a fresh process, on a free port of 127.0.0.1; returns
    (the process, the address it printed) once it answers."""
    import select

    process = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "serve_covid19.py"), "--port", "0", *argv],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    line = process.stdout.readline() if ready else ""
    match = re.search(r"http://127\.0\.0\.1:\d+/", line)
    if not match:
        process.kill()
        raise AssertionError(f"no address printed: {line!r} {process.stderr.read()[-2000:]}")
    return process, match.group(0)


def stop_server(process, timeout=30):
    """SIGTERM, then (exit code, the rest of stdout, stderr)."""
    import signal

    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def outputs_in(folder):
    """A run's outputs and cache in `folder`: never the defaults in the working folder, where
    another test's run would hold their lock."""
    return ["--model", str(folder / "m.h5"), "--plot", str(folder / "p.png"), "--report",
            str(folder / "r.json"), "--cache-dir", str(folder / "c")]
