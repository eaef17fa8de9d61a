"""covid19xray.writing: outputs are checked first, replaced whole or not at all, never overwritten,
and claimed by one run at a time."""

import os
import signal
import subprocess
import sys
import time

import pytest

from covid19xray.cli import UserError
from covid19xray.preflight import check_output_path
from covid19xray.writing import (
    CONFLICT,
    COPIED,
    PRESENT,
    atomic_output,
    claim_outputs,
    copy_new_file,
)
from helpers import ROOT


def test_atomic_output_replaces_only_on_success(tmp_path):
    target = tmp_path / "model.h5"
    target.write_bytes(b"earlier model")
    with pytest.raises(RuntimeError):
        with atomic_output(str(target)) as temporary:
            assert temporary.endswith(".h5") and os.path.dirname(temporary) == str(tmp_path)
            with open(temporary, "wb") as f:
                f.write(b"half a mod")
            raise RuntimeError("crash mid-save")
    assert target.read_bytes() == b"earlier model"
    assert os.listdir(tmp_path) == ["model.h5"]  # no temporary left behind

    with atomic_output(str(target)) as temporary:
        with open(temporary, "wb") as f:
            f.write(b"new model")
    assert target.read_bytes() == b"new model"
    assert os.listdir(tmp_path) == ["model.h5"]


def test_copy_new_file_never_overwrites(tmp_path):
    source = tmp_path / "a.jpg"
    source.write_bytes(b"image")
    os.utime(source, (1_000_000, 1_000_000))
    destination = tmp_path / "out.jpg"
    assert copy_new_file(str(source), str(destination)) == COPIED
    assert destination.read_bytes() == b"image"
    assert destination.stat().st_mtime == 1_000_000  # metadata preserved
    assert copy_new_file(str(source), str(destination)) == PRESENT
    destination.write_bytes(b"other")
    assert copy_new_file(str(source), str(destination)) == CONFLICT
    assert destination.read_bytes() == b"other"


def test_check_output_path(tmp_path):
    check_output_path(str(tmp_path / "m.h5"), "--model", suffix=".h5")
    with pytest.raises(UserError, match="must end in .h5"):
        check_output_path(str(tmp_path / "covid19.model"), "--model", suffix=".h5")
    with pytest.raises(UserError, match="does not exist"):
        check_output_path(str(tmp_path / "no" / "m.h5"), "--model", suffix=".h5")
    (tmp_path / "d.h5").mkdir()
    with pytest.raises(UserError, match="is a folder"):
        check_output_path(str(tmp_path / "d.h5"), "--model", suffix=".h5")


def hold_claim(path):
    """Another process that claims `path` and waits; it prints 'held' once it holds it."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\n"
         "from covid19xray.writing import claim_outputs\n"
         "with claim_outputs(sys.argv[1]):\n"
         "    print('held', flush=True)\n"
         "    time.sleep(60)\n", path],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    return holder


def test_a_claimed_output_stops_a_second_run_naming_the_first(tmp_path):
    model = str(tmp_path / "covid19.h5")
    holder = hold_claim(model)
    try:
        with pytest.raises(UserError) as raised:
            with claim_outputs(str(tmp_path / "plot.png"), model):
                pass
        assert str(raised.value) == (f"{model!r} is being written by another run (process "
                                     f"{holder.pid}); wait for it to end, or write elsewhere")
        # what the second run claimed before it stopped is released again
        with claim_outputs(str(tmp_path / "plot.png")):
            pass
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_runs_lock_blocks_nobody(tmp_path):
    model = str(tmp_path / "covid19.h5")
    holder = hold_claim(model)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert os.path.exists(tmp_path / ".covid19.h5.lock")  # left behind by the killed run
    with claim_outputs(model):
        assert (tmp_path / ".covid19.h5.lock").read_text() == f"{os.getpid()}\n"
    assert os.listdir(tmp_path) == []  # released: the lock file goes with it


def test_waiting_claims_take_turns(tmp_path):
    manifest = str(tmp_path / "manifest.csv")
    holder = hold_claim(manifest)
    start = time.monotonic()
    killer = subprocess.Popen([sys.executable, "-c", "import os, sys, time; time.sleep(1); "
                               f"os.kill({holder.pid}, 9)"])
    with claim_outputs(manifest, wait=True):
        waited = time.monotonic() - start
    killer.wait()
    holder.wait()
    assert waited >= 0.9  # it waited for the holder instead of failing


@pytest.mark.parametrize("plant", ["symbolic link", "hard link", "folder"])
def test_a_planted_lock_file_is_refused_and_what_it_points_to_is_untouched(tmp_path, plant):
    thesis = tmp_path / "elsewhere" / "thesis.tex"
    thesis.parent.mkdir()
    thesis.write_bytes(b"\\documentclass{article} years of work\n")
    shared = tmp_path / "shared"
    shared.mkdir()
    lock = shared / ".predictions.csv.lock"
    if plant == "symbolic link":
        lock.symlink_to(thesis)
    elif plant == "hard link":
        os.link(thesis, lock)
    else:
        lock.mkdir()
    with pytest.raises(UserError, match=r"cannot use the lock file .*\.predictions\.csv\.lock"):
        with claim_outputs(str(shared / "predictions.csv")):
            pass
    assert thesis.read_bytes() == b"\\documentclass{article} years of work\n"
    assert os.path.lexists(lock)  # left for the user to see, not removed
