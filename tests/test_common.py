"""covid19_common: the shared pieces that keep the user's files safe."""

import os

import pytest

from covid19_common import (
    CONFLICT,
    COPIED,
    PRESENT,
    UserError,
    atomic_output,
    check_output_path,
    copy_new_file,
)


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
