"""covid19xray.cache: entries that are damaged or were written for something else are never
trusted."""

import os

import numpy as np
import pytest

from covid19xray.cache import MAX_ENTRY_BYTES as CACHE_LIMIT
from covid19xray.cache import FeatureCache, cache_line
from covid19xray.cli import UserError
from helpers import read_only


@pytest.mark.parametrize("damage", ["truncate", "flip a byte", "foreign", "empty"])
def test_a_damaged_or_foreign_entry_is_recomputed_with_a_warning(tmp_path, capsys, damage):
    cache = FeatureCache(str(tmp_path), {"what": "test"})
    features = np.arange(512, dtype=np.float32)
    digest = "ab" * 32
    cache.put(digest, features)
    np.testing.assert_array_equal(cache.get(digest), features)
    path = cache._path(digest)
    data = open(path, "rb").read()
    if damage == "truncate":
        data = data[:-10]
    elif damage == "flip a byte":
        data = data[:100] + bytes([data[100] ^ 1]) + data[101:]
    elif damage == "foreign":  # a valid entry of another image, copied over this one
        cache.put("cd" * 32, features + 1)
        data = open(cache._path("cd" * 32), "rb").read()
    else:
        data = b""
    with open(path, "wb") as f:
        f.write(data)
    assert cache.get(digest) is None
    assert capsys.readouterr().err == (
        f"[WARNING] feature cache entry {path} is damaged or was written for something else; "
        "computing it again\n")
    cache.put(digest, features)  # recomputed, and replaced
    np.testing.assert_array_equal(cache.get(digest), features)
    assert not [name for name in os.listdir(os.path.dirname(path)) if ".tmp" in name]


def test_the_cache_line_says_where_what_and_how_much(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    root = str(tmp_path / ".cache" / "covid19-xray")
    first, second = FeatureCache(root, {"variant": "a"}), FeatureCache(root, {"variant": "b"})
    rotated = FeatureCache(root, {"variant": "rotated"}, what="rotations")
    first.store(["ab" * 32, "cd" * 32], np.zeros((2, 512), np.float32))
    assert second.lookup(["ab" * 32, "ef" * 32]) == [None, None]  # another configuration
    np.testing.assert_array_equal(first.lookup(["ab" * 32, "ef" * 32])[0], np.zeros(512))
    rotated.store(["12" * 32, "34" * 32, "56" * 32], np.ones((3, 512), np.float32))
    entries = [os.path.join(base, name) for base, _, names in os.walk(root) for name in names
               if name.endswith(".features")]
    assert len(entries) == 5 and {os.path.getsize(path) for path in entries} == {2137}
    # on disk, what the filesystem gives each entry (a whole block), and the folder in all
    entry = os.stat(entries[0]).st_blocks * 512
    size = sum(os.stat(os.path.join(base, name)).st_blocks * 512
               for base, _, names in os.walk(root) for name in names)
    assert entry >= 2137 and size >= 5 * entry
    assert cache_line([first, second, rotated]) == (
        "[INFO] feature cache ~/.cache/covid19-xray: 1 image(s) found, 2 computed; 0 rotations "
        f"found, 3 computed; {entry / 1e3:.1f} kB an entry, {size / 1e6:.1f} MB in all (delete "
        "the folder to clear it, or run with --no-cache)")


def test_the_cache_folders_are_the_users_alone(tmp_path):
    root = tmp_path / "cache"
    cache = FeatureCache(str(root), {"what": "test"})
    cache.put("ab" * 32, np.zeros(4, np.float32))
    for folder in [root, root / os.path.basename(cache.folder),
                   os.path.dirname(cache._path("ab" * 32))]:
        assert os.stat(folder).st_mode & 0o777 == 0o700, folder


# ---------------------------------------------------------------------------------------------
# Entries that are not files, and folders that cannot be written
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("plant, what", [
    (os.mkfifo, "is a FIFO, not an entry"),
    (lambda path: os.symlink("/dev/zero", path), "is a link, not an entry"),
    (os.mkdir, "is a folder, not an entry"),
    (lambda path: open(path, "wb").truncate(CACHE_LIMIT + 1), "more than any entry"),
])
def test_an_entry_that_is_not_a_file_is_removed_unread_and_recomputed(tmp_path, capsys, plant,
                                                                      what):
    """A FIFO would hang the run, /dev/zero would be read without end, a folder would fail
    every later run: each is named in one warning, removed, and the entry written anew."""
    cache = FeatureCache(str(tmp_path), {"what": "test"})
    digest, features = "ab" * 32, np.arange(512, dtype=np.float32)
    path = cache._path(digest)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    plant(path)
    assert cache.lookup([digest]) == [None]  # at once: nothing waits on the FIFO
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"[WARNING] feature cache entry {path} ") and what in line
    assert line.endswith("; removed, computing it again")
    assert not os.path.lexists(path)
    cache.store([digest], features[None])
    np.testing.assert_array_equal(cache.get(digest), features)
    assert capsys.readouterr().err == ""


def test_a_cache_folder_that_cannot_be_written_is_one_line_before_any_work(tmp_path):
    cache = FeatureCache(str(tmp_path), {"what": "test"})
    cache.put("ab" * 32, np.zeros(4, np.float32))
    entries = os.path.dirname(cache._path("ab" * 32))
    with read_only(entries):
        with pytest.raises(UserError) as refused:
            FeatureCache(str(tmp_path), {"what": "test"})
    assert str(refused.value) == (
        f"--cache-dir {str(tmp_path)!r}: its folder {entries!r} cannot be written; fix its "
        "permissions, give another --cache-dir, or run with --no-cache")
