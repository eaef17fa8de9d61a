"""covid19xray.cli: every script answers --help and a bad flag at once, before TensorFlow loads,
and ends a user's error in one line."""

import csv
import dataclasses
import os
import re
import subprocess
import sys

import pytest

import audit_covid19
import build_covid_dataset
import predict_covid19
import sample_kaggle_dataset
import sample_nih_dataset
import train_covid19
from covid19xray.cli import UsageError, UserError, cli, one_line
from covid19xray.config import SEED
from helpers import ROOT, run_main, write_image

# Runs a script as `python SCRIPT ARGS` would, then says whether TensorFlow was imported, and
# SciPy or scikit-learn (a second more before the answer).
PROBE = ("import runpy, sys\n"
         "script = sys.argv[1]\n"
         "sys.argv = sys.argv[1:]\n"
         "try:\n"
         "    runpy.run_path(script, run_name='__main__')\n"
         "except SystemExit as exit:\n"
         "    loaded = 'tensorflow.python' in sys.modules\n"
         "    print('exit', exit.code, 'tensorflow loaded:', loaded, file=sys.stderr)\n"
         "    print('scipy or sklearn loaded:', 'scipy' in sys.modules or 'sklearn' in "
         "sys.modules, file=sys.stderr)\n")


@pytest.mark.parametrize("script, argv, code, output", [
    ("train_covid19.py", ["--dataset", "d", "--epochs", "0"], 2,
     "train_covid19.py: error: argument --epochs: must be a finite number greater than 0, got 0"),
    ("predict_covid19.py", ["--help"], 0, "--gradcam DIR"),
    ("audit_covid19.py", ["--help"], 0, "--lr LR"),
])
def test_help_and_usage_errors_answer_before_tensorflow_loads(script, argv, code, output):
    result = subprocess.run([sys.executable, "-c", PROBE, script, *argv], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert lines[-2:] == [f"exit {code} tensorflow loaded: False",
                          "scipy or sklearn loaded: False"], result.stderr
    assert output in result.stdout + result.stderr
    assert not [line for line in lines if "oneDNN" in line or "cuda" in line.lower()]


def test_a_scripts_process_freezes_the_garbage_collector_as_it_ends():
    """The interpreter's last collections walked every object TensorFlow and Keras hold: a run
    that had loaded VGG16 ended about a second after its last line. What the package registers
    at exit freezes the collector first (run here as the interpreter runs it)."""
    probe = ("import atexit, gc\n"
             "import covid19xray.cli\n"
             "before = gc.get_freeze_count()\n"
             "atexit._run_exitfuncs()\n"
             "print(before, gc.get_freeze_count() > 0)\n")
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.stdout.split() == ["0", "True"], result.stderr


def test_an_error_text_over_several_lines_is_printed_as_one():
    @cli
    def main(argv=None):
        raise UserError("cannot read x.h5:\nUnable to open file\n  (truncated)")

    code, out, err = run_main(main, [])
    assert code == 1 and out == ""
    assert err == "test_cli.py: error: cannot read x.h5: Unable to open file (truncated)\n"
    assert one_line("a\r\n  b\n\nc ") == "a b c"


def test_when_tensorflow_fails_to_start_its_own_lines_show_in_full(tmp_path):
    # a stand-in TensorFlow whose C++ side writes to file descriptor 2, then fails
    fake = tmp_path / "tensorflow"
    fake.mkdir()
    (fake / "__init__.py").write_text(
        "import os\n"
        "os.write(2, b'E0000 00:00:1 cuda_dnn.cc:1] could not load libcudnn.so.9\\n')\n"
        "raise ImportError('libcudnn.so.9: cannot open shared object file')\n")
    result = subprocess.run(
        [sys.executable, "-c", "from covid19xray.cli import import_tensorflow\n"
                               "import_tensorflow()\n"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), ROOT])})
    assert result.returncode == 1
    assert "E0000 00:00:1 cuda_dnn.cc:1] could not load libcudnn.so.9" in result.stderr
    assert result.stderr.rstrip().endswith(
        "ImportError: libcudnn.so.9: cannot open shared object file")


@pytest.mark.parametrize("parse_args, argv, config_class, fields", [
    (train_covid19.parse_args, ["-d", "d"], train_covid19.TrainConfig, {"dataset": "d"}),
    (audit_covid19.parse_args, ["-d", "d"], audit_covid19.AuditConfig, {"dataset": "d"}),
    (predict_covid19.parse_args, ["x.png"], predict_covid19.PredictConfig, {"images": ["x.png"]}),
])
def test_every_flag_is_made_from_its_config_field(parse_args, argv, config_class, fields):
    """One source for every default: the flags that were not given take the dataclass's
    defaults, and a flag given sets exactly its field."""
    config = config_class(**fields)  # here, where the test's cache folder is the default
    assert parse_args(argv) == config
    given = parse_args([*argv, "--batch-size", "3"])
    assert given.batch_size == 3 and given == dataclasses.replace(config, batch_size=3)


def test_a_field_named_apart_from_its_flag_is_reported_by_the_flag():
    """`external_folders` is --external and `split_by` is --split: the flag sets the field, and
    report.json's `flags` names the flag, as it always has."""
    config = train_covid19.parse_args(["-d", "d", "--split", "patient", "--external", "e1",
                                       "--external", "e2"])
    assert config.split_by == "patient" and config.external_folders == ("e1", "e2")
    flags = config.flags()
    assert flags["split"] == "patient" and flags["external"] == ("e1", "e2")
    assert "split_by" not in flags and "external_folders" not in flags
    audit = audit_covid19.parse_args(["-d", "d", "--external", "e"])
    assert audit.external_folder == "e" and audit.flags()["external"] == "e"


def test_the_help_shows_each_default_from_its_field(capsys):
    with pytest.raises(SystemExit):
        train_covid19.parse_args(["--help"])
    options = " ".join(capsys.readouterr().out.split()).split("options:")[1]
    for field, default in [("epochs", 25), ("batch-size", 8), ("lr", 0.001), ("seed", SEED),
                           ("model", "covid19.h5"), ("split", "random")]:
        # the flag, then its help up to its own default, with no other default between
        assert re.search(rf"--{field} (?:(?!\(default:).)*\(default: {re.escape(str(default))}\)",
                         options), field
    assert re.search(r"--external DIR (?:(?!\(default:).)*repeatable --cache-features", options)


@pytest.mark.parametrize("parse_args, argv", [
    (build_covid_dataset.parse_args, ["-c", "c", "-o", "o"]),
    (sample_kaggle_dataset.parse_args, ["-k", "k", "-o", "o"]),
    (sample_nih_dataset.parse_args, ["-n", "n", "-o", "o"]),
])
def test_the_builders_take_the_shared_seed_flag(parse_args, argv):
    assert parse_args(argv).seed == SEED
    assert parse_args([*argv, "--seed", "7"]).seed == 7
    with pytest.raises(UsageError):  # the same range as train's and the audit's seed
        parse_args([*argv, "--seed", "-1"])


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


# A script whose main is busy in a finalizer when the signal comes: Python cannot raise there
# ("Exception ignored"), and the run went on to exit 0. Each object's __del__ spins for 0.3 s,
# then the script waits 0.2 s: the signal, sent 0.1 s in, lands in the first finalizer.
SIGNAL_IN_A_FINALIZER = """
import os, signal, sys, threading, time
from covid19xray.cli import cli

class Slow:
    def __del__(self):
        end = time.monotonic() + 0.3
        while time.monotonic() < end:
            pass

@cli
def main(argv=None):
    threading.Timer(0.1, os.kill, (os.getpid(), getattr(signal, sys.argv[1]))).start()
    for _ in range(10):
        Slow()  # finalized at once
        time.sleep(0.2)
    print("not stopped")
    return 0

sys.exit(main())
"""


@pytest.mark.parametrize("signal_name, code, line", [
    ("SIGTERM", 143, "terminated (SIGTERM)"), ("SIGINT", 130, "interrupted")])
def test_a_signal_that_lands_in_a_finalizer_still_stops_the_run(tmp_path, signal_name, code,
                                                                  line):
    script = tmp_path / "slow_finalizers.py"
    script.write_text(SIGNAL_IN_A_FINALIZER)
    result = subprocess.run([sys.executable, str(script), signal_name], cwd=ROOT,
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": ROOT})
    assert (result.returncode, result.stdout) == (code, "")
    assert result.stderr == f"slow_finalizers.py: {line}; no output was replaced\n"
