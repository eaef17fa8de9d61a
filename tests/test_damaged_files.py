"""Bad input, round 4: damaged DICOM headers, DICOM decoded from threads in a fresh process, C
decoders' lines tied to their files, and a seeded fuzzing run over every kind of file read."""

import os
import re
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest

import build_covid_dataset
import predict_covid19
import sample_nih_dataset
import train_covid19
from covid19xray import confounds
from covid19xray.cli import UserError
from covid19xray.images import NotAnImage, decode
from covid19xray.layout import load_dataset
from covid19xray.manifest import read_manifest
from covid19xray.splits import patients_of
from helpers import (
    ROOT,
    fuzz_seed_files,
    make_dataset,
    mutate,
    mutate_text,
    run_main,
    shipped_xray,
    splice_dicom_element,
    to_12_bits,
    write_collection,
    write_dicom,
    write_nih,
    write_png16,
)


def grey_xray(size=(64, 64)):
    return cv2.resize(cv2.imread(shipped_xray(), cv2.IMREAD_GRAYSCALE), size)


# ---------------------------------------------------------------------------------------------
# 0. Damaged DICOM headers: one skipped line each
# ---------------------------------------------------------------------------------------------

DAMAGED_HEADERS = [
    # the file: Columns holding two values gave `TypeError: int() argument ... 'list'`
    ("Columns", b"\x40\x00\x40\x00", "Columns holds 2 values, not one"),
    ("Rows", b"", "without an image (no Rows and Columns)"),
    ("BitsStored", b"\x63\x00", "BitsStored is 99, outside 1-16"),
    ("BitsAllocated", b"\x00\x00", "BitsAllocated is 0, outside 1-64"),
    ("SamplesPerPixel", b"\x00\x00", "SamplesPerPixel is 0, outside 1-4"),
    ("PixelRepresentation", b"\x07\x00", "PixelRepresentation is 7, outside 0-1"),
    ("PhotometricInterpretation", b"MONOCHROME2\\RGB ", "PhotometricInterpretation holds 2"),
    ("WindowCenter", b"abc ", "WindowCenter"),
    ("WindowWidth", b"1e999 ", "WindowWidth is '1e999', not a number"),
    ("RescaleSlope", b"nan ", "RescaleSlope"),
    ("RescaleIntercept", b"1\\2\\3 ", "RescaleIntercept holds 3 values, not one"),
]


@pytest.fixture(scope="module")
def windowed_dicom(tmp_path_factory):
    path = tmp_path_factory.mktemp("dicom") / "base.dcm"
    write_dicom(str(path), to_12_bits(grey_xray()), rescale=(1, 0), window=(2048, 4096))
    return path.read_bytes()


@pytest.mark.parametrize("keyword, value, reason", DAMAGED_HEADERS,
                         ids=[case[0] for case in DAMAGED_HEADERS])
def test_a_damaged_dicom_header_value_is_refused_in_one_line(windowed_dicom, keyword, value,
                                                            reason):
    decode(windowed_dicom)  # the file itself is fine
    with pytest.raises(NotAnImage) as refused:
        decode(splice_dicom_element(windowed_dicom, keyword, value))
    assert reason in str(refused.value) and "\n" not in str(refused.value)


def test_damaged_dicom_files_are_skipped_and_the_prediction_run_goes_on(trained, tmp_path,
                                                                        windowed_dicom):
    good = tmp_path / "in" / "a-good.dcm"
    good.parent.mkdir()
    good.write_bytes(windowed_dicom)
    for keyword, value, _ in DAMAGED_HEADERS:
        (tmp_path / "in" / f"{keyword}.dcm").write_bytes(
            splice_dicom_element(windowed_dicom, keyword, value))
    code, out, err = run_main(predict_covid19.main, ["--model", trained["model"],
                                                     str(tmp_path / "in")])
    assert code == 0, err
    # the one good file's line, then the input check's count
    assert [line.split(":")[0] for line in out.splitlines()] == [str(good), "[INFO] input check"]
    skipped = [line for line in err.splitlines() if line.startswith("[WARNING] skipping")]
    assert len(skipped) == len(DAMAGED_HEADERS) and "Traceback" not in err
    for (keyword, _, reason), line in zip(sorted(DAMAGED_HEADERS), sorted(skipped)):
        assert f"{keyword}.dcm: " in line and reason in line


# ---------------------------------------------------------------------------------------------
# 1. DICOM decoded from the loader's threads, in a fresh process
# ---------------------------------------------------------------------------------------------


def test_a_folder_of_dicom_files_loads_whole_from_threads_in_a_fresh_process(tmp_path):
    """pydicom's first import happens inside the loader's thread pool. Before, the lazy
    import was not thread-safe on Python 3.11 and 7 of 10 DICOM files were skipped with
    "module 'pydicom' has no attribute 'dcmread'"; a test process that had imported pydicom
    already could not see it."""
    twelve = to_12_bits(grey_xray())
    for i in range(10):
        write_dicom(str(tmp_path / "covid" / f"{i}.dcm"), np.roll(twelve, i, axis=1))
        os.makedirs(tmp_path / "normal", exist_ok=True)
        write_png16(tmp_path / "normal" / f"{i}.png", np.roll(twelve, i, axis=0))
    probe = textwrap.dedent("""
        import sys
        from covid19xray.layout import load_dataset
        assert "pydicom" not in sys.modules
        images, paths, labels = load_dataset(sys.argv[1])
        print(len(paths), list(labels).count("covid"), len(images.skipped))
    """)
    result = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["20", "10", "0"], result.stderr
    assert "skipping" not in result.stderr


# ---------------------------------------------------------------------------------------------
# 2. What libpng and libjpeg write, tied to the file
# ---------------------------------------------------------------------------------------------


def write_noisy_files(folder):
    """{name: what its decoder says}: a JPEG that decodes whole but with extraneous bytes
    before its end marker, and a PNG with a bad row filter, which does not decode."""
    os.makedirs(folder, exist_ok=True)
    grey = grey_xray()
    jpeg = cv2.imencode(".jpg", grey)[1].tobytes()
    png = bytearray(cv2.imencode(".png", grey, [cv2.IMWRITE_PNG_COMPRESSION, 0])[1].tobytes())
    png[png.index(b"IDAT") + 4 + 2 + 5] = 9  # the first row's filter byte: 9 is no filter
    files = {"extra-bytes.jpg": jpeg[:-2] + b"\0" * 7 + b"\xff\xd9",
             "bad-filter.png": bytes(png)}
    for name, data in files.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
    cv2.imwrite(os.path.join(folder, "fine.png"), grey)
    return {"extra-bytes.jpg": "Corrupt JPEG data: 7 extraneous bytes before marker 0xd9",
            "bad-filter.png": "libpng error"}


def assert_named_once(err, folder, said):
    for name, message in said.items():
        lines = [line for line in err.splitlines() if os.path.join(folder, name) in line]
        assert len(lines) == 1 and message in lines[0], err
    assert re.search(r"extra-bytes.jpg: damaged, used as far as it decodes", err)
    assert re.search(r"skipping .*bad-filter.png: not a readable image \(the decoder said: "
                     r"libpng error", err)


def test_decoder_lines_name_their_file_once_when_training_loads(tmp_path, capfd):
    said = write_noisy_files(str(tmp_path / "covid"))
    images, paths, labels = load_dataset(str(tmp_path))
    out, err = capfd.readouterr()
    assert not [line for line in err.splitlines() if not line.startswith("[WARNING] ")], err
    assert_named_once(err, str(tmp_path / "covid"), said)
    assert sorted(os.path.basename(path) for path in paths) == ["extra-bytes.jpg", "fine.png"]


def test_decoder_lines_name_their_file_once_when_predicting(trained, tmp_path, capfd):
    said = write_noisy_files(str(tmp_path / "in"))
    code, out, err = run_main(predict_covid19.main, [
        "--model", trained["model"], str(tmp_path / "in"), "--gradcam", str(tmp_path / "cams"),
        "--classify-rejected"])  # an overlay for each, whatever the input check says
    assert code == 0
    assert capfd.readouterr().err == ""  # nothing reached the terminal beside the lines below
    assert_named_once(err, str(tmp_path / "in"), said)
    # two predictions, the input check's count and the Grad-CAM line
    assert len(out.splitlines()) == 4


# ---------------------------------------------------------------------------------------------
# 5. Fuzzing: every kind of file, damaged by a seeded mutator
# ---------------------------------------------------------------------------------------------

FUZZ_SEED, MUTANTS_PER_FILE, MUTANTS_PER_CSV = 2026, 12, 24


def fuzz_corpus(folder):
    """Each seed file and MUTANTS_PER_FILE damaged copies of it, half in covid/, half in
    normal/: {path: bytes}."""
    corpus = {}
    for k, (name, data) in enumerate(sorted(fuzz_seed_files(str(folder.parent / "seeds")).items())):
        stem, ext = os.path.splitext(name)
        for case in range(MUTANTS_PER_FILE + 1):
            rng = np.random.default_rng([FUZZ_SEED, k, case])
            path = folder / ("covid", "normal")[case % 2] / f"{stem}-{case:02d}{ext}"
            corpus[str(path)] = data if case == 0 else mutate(data, rng)
    for path, data in corpus.items():
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    return corpus


def lines_naming(text, path):
    return [line for line in text.splitlines() if f"{path}:" in line]


@pytest.mark.slow
def test_damaged_files_of_every_kind_are_used_or_skipped_in_one_line(trained, tmp_path, capfd):
    import resource
    import warnings

    corpus = fuzz_corpus(tmp_path / "fuzz")
    # every warning that would reach the terminal is recorded instead (pytest would hide them)
    recorded = warnings.catch_warnings(record=True)
    shown_warnings = recorded.__enter__()
    warnings.simplefilter("always")
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    # the loader of train and the audit, and the audit's measurements
    code_and_store = run_main(lambda argv: load_dataset(argv[0]), [str(tmp_path / "fuzz")])
    (images, paths, labels), _, load_err = code_and_store
    used = set(paths)
    confounds.measure(images, paths)
    assert used and len(used) < len(corpus)
    skipped = {path for path, _, _ in images.skipped}
    assert used | skipped == set(corpus) and not used & skipped
    for path in corpus:
        lines = lines_naming(load_err, path)
        assert len(lines) == (1 if path in skipped else len(lines)) and len(lines) <= 1, path
    images.close()

    # prediction: each file predicted or skipped, in one line
    code, out, err = run_main(predict_covid19.main, [
        "--model", trained["model"], str(tmp_path / "fuzz"), "--batch-size", "16"])
    assert code == 0, err
    for path in corpus:
        predicted, warned = lines_naming(out, path), lines_naming(err, path)
        if path in used:
            assert len(predicted) == 1 and len(warned) <= 1, (path, err)
        else:
            assert not predicted and len(warned) == 1 and "skipping" in warned[0], (path, err)

    # training on the same folder
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, out, err = run_main(train_covid19.main, [
        "--dataset", str(tmp_path / "fuzz"), "--weights", "none", "--epochs", "1",
        "--batch-size", "4", "--cache-features", "--no-cache",
        "--model", str(out_dir / "m.h5"), "--plot", str(out_dir / "p.png"),
        "--report", str(out_dir / "r.json")])
    assert code == 0, err
    assert f"[INFO] {len(used)} images" in out
    assert "Traceback" not in err
    assert capfd.readouterr().err == ""  # no C library line reached the terminal
    recorded.__exit__(None, None, None)
    # Python shows these by default (not the deprecations, which it hides outside __main__)
    hidden = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)
    assert [str(warning.message) for warning in shown_warnings
            if not issubclass(warning.category, hidden)] == []
    # decoding 108 damaged files grows the process by far less than a gigabyte
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 1 << 20  # KiB


def test_damaged_csv_files_are_read_or_refused_in_one_line(tmp_path):
    """Cohen's metadata.csv and NIH's label file through their builders, and manifest.csv
    through its reader and the patients' lookup: each damaged copy is read, or refused in one
    line, never a traceback."""
    collection = write_collection(str(tmp_path / "cohen"), "current")
    nih = write_nih(str(tmp_path / "nih"))
    label_file = os.path.join(nih, "Data_Entry_2017_v2020.csv")
    with open(label_file, "rb") as f:
        labels = f.read()
    with open(os.path.join(collection, "metadata.csv"), "rb") as f:
        metadata = f.read()
    dataset = tmp_path / "data"
    make_dataset(str(dataset), per_class=2)
    manifest = ("file,class,patient_id,source,license,url,excluded_patients_of,sha256,"
                "downloaded_from\n" + "".join(
                    f"{c}/{c}-{i:02d}.{'png' if i % 2 else 'jpg'},{c},{c}{i},cohen,CC BY 4.0,"
                    f"https://example.org/{i},,{'0' * 64},\n"
                    for c in ("covid", "normal") for i in range(2))).encode()
    outcomes = {"read": 0, "refused": 0}
    for case in range(MUTANTS_PER_CSV):
        rng = np.random.default_rng([FUZZ_SEED, 99, case])
        for script, source, data, argv in [
                (build_covid_dataset, os.path.join(collection, "metadata.csv"), metadata,
                 ["--covid", collection, "--output", str(tmp_path / f"built-{case}" / "covid")]),
                (sample_nih_dataset, label_file, labels,
                 ["--nih", nih, "--output", str(tmp_path / f"nih-{case}" / "normal")])]:
            with open(source, "wb") as f:
                f.write(mutate_text(data, rng))
            code, out, err = run_main(script.main, argv)
            assert code in (0, 1) and "Traceback" not in err, err
            assert code == 0 or err.strip().splitlines()[-1].startswith(
                f"{script.__name__}.py: error: "), err
        (dataset / "manifest.csv").write_bytes(mutate_text(manifest, rng))
        try:
            read_manifest(str(dataset))
            patients_of(str(dataset), sorted(str(p) for p in dataset.glob("*/*")))
            outcomes["read"] += 1
        except UserError as err:
            assert "\n" not in str(err)
            outcomes["refused"] += 1
    assert outcomes["read"] and outcomes["refused"], outcomes


# ---------------------------------------------------------------------------------------------
# 4. bfloat16 on a CPU without it
# ---------------------------------------------------------------------------------------------

CPU_FLAGS = {
    # an AMD EPYC Zen 3 with AVX2 and no AVX-512: bfloat16 is emulated there
    "zen3": ("fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 bmi2 sha_ni vaes", False),
    "zen4": ("fpu sse2 avx avx2 avx512f avx512bw avx512_vnni avx512_bf16 vaes", True),
    "sapphire rapids": ("fpu sse2 avx2 avx512f avx512_fp16 amx_bf16 amx_tile amx_int8", True),
}


@pytest.mark.parametrize("cpu", CPU_FLAGS)
def test_native_bfloat16_is_read_from_the_cpu_flags(tmp_path, monkeypatch, cpu):
    import platform

    from covid19xray.model import cpu_has_native_bfloat16

    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    flags, native = CPU_FLAGS[cpu]
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: "
                       f"{flags}\n")
    assert cpu_has_native_bfloat16(str(cpuinfo)) is native
