"""Writing files without losing any: atomic replacement, no overwriting, locks (the checks made
before any work are `preflight`).

- `commit_outputs`: the one way train, predict and the audit write: every output locked, written
  to a temporary file beside it, and all renamed into place only when the run succeeds: a
  crash, Ctrl-C or SIGTERM leaves the earlier files byte-for-byte as they were, and no
  half-written file. The temporary files a killed run could not remove are removed by the next
  run that holds the same outputs. `atomic_outputs` is the same without the lock.
- `claim_outputs`: an advisory lock beside each output, so that a second run writing the same
  outputs stops at its start, naming the first, and a set of outputs always comes from one run.
  The kernel releases the lock when its process dies, however it dies: a killed run never blocks
  the next one. A lock file that is a link, or not a regular file of the user's, is refused:
  nothing outside the outputs is ever truncated. (Where `fcntl` does not exist, on Windows,
  there is no lock.)
- `copy_new_file`: copy a file unless something is there already; never overwrite.
- `Background`: file writes in one thread beside the caller's work, their first error raised
  in the caller.
"""

import collections
import concurrent.futures
import contextlib
import errno
import filecmp
import hashlib
import os
import re
import shutil
import stat
import sys
import uuid

from .cli import UserError, shown

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

# The outcomes of `copy_new_file`, also the keys of the builders' summaries.
COPIED, PRESENT, CONFLICT = "copied", "already present", "conflicts"


def remove_path(path):
    """Remove the file, link or folder at `path` (a folder with what it holds; a link, never
    what it points to); nothing there is no error."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def file_kind(mode):
    """What a file of `mode` (`os.stat`'s `st_mode`) is, in words: for the one line that
    refuses what is not a regular file."""
    return ("a link" if stat.S_ISLNK(mode) else "a folder" if stat.S_ISDIR(mode)
            else "a FIFO" if stat.S_ISFIFO(mode) else "a character device" if stat.S_ISCHR(mode)
            else "a block device" if stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a file")


def file_digest(path):
    """The SHA-256 of the file at `path`, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_temporary(name, of=None):
    """Whether `name` is a temporary `temporary_beside` made (for the output named `of`, or
    for any output)."""
    stem = re.escape(of) if of else r".+"
    suffix = re.escape(os.path.splitext(of)[1]) if of else r"(\.[^.]*)?"
    return re.fullmatch(rf"\.{stem}\.[0-9a-f]{{12}}\.tmp{suffix}", name) is not None


def remove_leftover_temporaries(paths, folders=()):
    """Remove the temporary files a killed run left beside `paths` and inside `folders` (the
    run holds their locks: no other run is writing them); says how many, on stderr."""
    leftovers = []
    for path in paths:
        folder, name = os.path.split(os.path.abspath(path))
        if os.path.isdir(folder):
            leftovers += [os.path.join(folder, entry) for entry in os.listdir(folder)
                          if _is_temporary(entry, name)]
    for folder in folders:
        if os.path.isdir(folder) and not os.path.islink(folder):
            leftovers += [os.path.join(folder, entry) for entry in os.listdir(folder)
                          if _is_temporary(entry)]
    for leftover in leftovers:
        remove_path(leftover)
    if leftovers:
        print(f"[WARNING] removed {len(leftovers)} temporary file(s) an interrupted run left "
              "beside the outputs", file=sys.stderr)


def temporary_beside(path):
    """A fresh hidden name beside `path` that keeps its suffix: Keras, matplotlib and OpenCV
    choose the file format from it."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}.{uuid.uuid4().hex[:12]}.tmp{os.path.splitext(name)[1]}")


class OutputCommit:
    """The outputs of one run, committed together: each is written to a temporary path beside
    it (`temporary`), and all are renamed into place only when the run succeeds, in the order
    their temporaries were asked for. An output may be a whole new folder (an exported model):
    it is written under its temporary name and renamed as one. `commit_outputs` and
    `atomic_outputs` make one."""

    def __init__(self, paths, folders=()):
        self.names = [*paths, *folders]  # as the user gave them, for messages
        self.paths = [os.path.abspath(path) for path in paths]
        self.folders = [os.path.abspath(folder) for folder in folders]
        self._pending = []  # (temporary, final)

    def temporary(self, path):
        """A fresh temporary path for the output `path` (one of the run's files, or a file in
        one of its folders), renamed to `path` when the run succeeds."""
        final = os.path.abspath(path)
        if final not in self.paths and os.path.dirname(final) not in self.folders:
            raise ValueError(f"{path!r} is not one of this run's outputs")
        temporary = temporary_beside(path)
        self._pending.append((temporary, path))
        return temporary

    @contextlib.contextmanager
    def writing(self):
        """Write the outputs in this block: an `OSError` (a full disk, a folder removed
        meanwhile) becomes one line saying that every earlier output was kept."""
        try:
            yield self
        except OSError as err:
            names = ", ".join(shown(name) for name in self.names)
            raise UserError(f"cannot write the outputs ({err.strerror or err}); every earlier "
                            f"{names} was kept") from None

    def _replace_all(self):
        for temporary, final in self._pending:
            if os.path.isdir(temporary) and os.path.lexists(final):
                # a folder renamed onto an empty one would replace it: never write over one
                raise FileExistsError(errno.EEXIST, "appeared while the run wrote it", final)
            os.replace(temporary, final)

    def _discard(self):
        for temporary, _ in self._pending:
            remove_path(temporary)


@contextlib.contextmanager
def _committing(commit):
    try:
        yield commit
        commit._replace_all()
    finally:  # whatever was not renamed into place goes
        commit._discard()


@contextlib.contextmanager
def commit_outputs(*paths, folders=()):
    """The one way a script writes its outputs: lock every one of `paths` and `folders`
    (`claim_outputs`), yield the run's `OutputCommit`, and rename every output it wrote into
    place only if the block succeeds. A crash, Ctrl-C, SIGTERM or a full disk anywhere before
    leaves every earlier output byte for byte as it was, and no temporary file."""
    with claim_outputs(*paths, *folders), _committing(OutputCommit(paths, folders)) as commit:
        remove_leftover_temporaries(paths, folders)
        yield commit


@contextlib.contextmanager
def atomic_outputs(*paths):
    """Yield one temporary path beside each of `paths`; rename them all into place only if the
    block succeeds, and remove every temporary file however it ends (no lock: for files that
    a lock already guards, such as the cache's entries and the manifest)."""
    with _committing(OutputCommit(paths)) as commit:
        yield [commit.temporary(path) for path in paths]


@contextlib.contextmanager
def atomic_output(path):
    """`atomic_outputs` for one file: yields its temporary path."""
    with atomic_outputs(path) as (temporary,):
        yield temporary


def _lock_path(path):
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}.lock")


def _open_lock_file(lock_path):
    """Open (or create) the lock file, refusing anything but a regular file of this user's with
    one name: a link planted in a shared folder must never lead the run to truncate the file it
    points to (O_NOFOLLOW refuses a symbolic link; a hard link has a second name)."""
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as err:
        reason = ("it is a symbolic link" if err.errno == errno.ELOOP
                  else err.strerror or str(err))
        raise UserError(f"cannot use the lock file {lock_path!r}: {reason}; remove it if no "
                        "run of this project is writing there") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or info.st_nlink != 1:
        os.close(fd)
        raise UserError(f"cannot use the lock file {lock_path!r}: it is not a regular file of "
                        "yours with a single name; remove it if no run of this project is "
                        "writing there")
    return fd


def _acquire(path, wait):
    """Lock `path`'s lock file for this process: wait for it, or raise a UserError naming the
    process that holds it."""
    lock_path = _lock_path(path)
    while True:
        fd = _open_lock_file(lock_path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise UserError(f"{path!r} is being written by another run (process {holder}); "
                            "wait for it to end, or write elsewhere") from None
        except BaseException:  # Ctrl-C while waiting: the lock file is not left behind
            _release(fd, lock_path)
            raise
        # The previous holder removes its lock file as it releases it; a lock taken on a file
        # that is no longer at `lock_path` guards nothing: take the new one.
        try:
            if os.stat(lock_path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        # who holds it, for the message a second run prints; on a full disk the lock works
        # without it
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError:
        pass
    return fd, lock_path


@contextlib.contextmanager
def claim_outputs(*paths, wait=False):
    """Hold an advisory lock beside each of `paths` (`.<name>.lock`) for the block.

    A run that would write an output another running process holds stops at once with a
    UserError naming that process (or, with `wait`, waits its turn: for a short update such as
    the manifest's). The lock files are removed when the block ends.
    """
    held = []
    try:
        if fcntl is not None:
            for path in sorted({os.path.abspath(path) for path in paths}):
                # An output whose folder is not there yet cannot be another run's output yet:
                # nothing to guard (and nothing is created before the run starts its work).
                if os.path.isdir(os.path.dirname(path)):
                    held.append(_acquire(path, wait))
        yield
    finally:
        for fd, lock_path in reversed(held):
            _release(fd, lock_path)


def _release(fd, lock_path):
    """Remove the lock file, then release its lock (closing it)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(lock_path)
    os.close(fd)


def copy_new_file(source, destination):
    """Copy `source` to `destination` (with its metadata) unless something is already there.

    Returns COPIED; PRESENT when an identical file is already at `destination` (reruns are safe);
    CONFLICT when a different file is there, which is never overwritten. The copy goes to a
    temporary file first, so an interrupted copy never leaves a truncated image behind.
    """
    if os.path.lexists(destination):
        if os.path.isfile(destination) and filecmp.cmp(source, destination, shallow=False):
            return PRESENT
        return CONFLICT
    with atomic_output(destination) as temporary:
        shutil.copy2(source, temporary)
    return COPIED


def missing_folders(folder):
    """The folders `os.makedirs(folder)` would create: `folder` and its missing parents,
    deepest first."""
    missing, path = [], os.path.abspath(folder)
    while not os.path.exists(path):
        missing.append(path)
        path = os.path.dirname(path)
    return missing


def remove_empty_folders(folders):
    """Remove each of `folders` (deepest first) that a failed run made and left empty."""
    for folder in folders:
        try:
            os.rmdir(folder)
        except OSError:  # not empty, or not there: not the failed run's to remove
            pass


class Background:
    """Runs calls in one thread, at most `waiting` queued, while the caller goes on: predict's
    Grad-CAM overlays are blended and PNG-encoded (about 35 ms a megapixel) while the network
    computes the next batch. The first error a call raised is raised in the caller, at its next
    `submit` or when the block ends; leaving the block, by an error or Ctrl-C too, waits for the
    call running and drops the queued ones, so no write outlives it."""

    def __init__(self, waiting=2):
        self.waiting = waiting
        self.pending = collections.deque()
        self.pool = concurrent.futures.ThreadPoolExecutor(1)

    def __enter__(self):
        return self

    def submit(self, function, *args):
        self.pending.append(self.pool.submit(function, *args))
        while self.pending and (len(self.pending) > self.waiting or self.pending[0].done()):
            self.pending.popleft().result()

    def __exit__(self, kind, error, traceback):
        try:
            while kind is None and self.pending:
                self.pending.popleft().result()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
