"""What every script's command line shares: one-line errors, Ctrl-C and SIGTERM, a fast --help.

- `UserError` is a problem the user can fix (a wrong path or flag). `cli` prints it as one line
  on stderr and exits with 1; a bad flag (`UsageError`, raised by `ArgumentParser`) exits with 2,
  as argparse does. Bugs still raise with their traceback: hiding those would help nobody.
- `cli` also turns Ctrl-C (exit 130) and SIGTERM (exit 143, what `kill`, `timeout` and CI
  runners send) into one line. Outputs are written through `outputs.commit_outputs`, so an
  interrupted run leaves every earlier output as it was.
- `lazy_import`: TensorFlow takes seconds to import and prints start-up lines. The modules that
  need it import it with this function, so it loads on first use and `--help` or a mistyped flag
  answers at once. The first use may come from any thread (the loader decodes in a pool).
- `import_tensorflow`: TensorFlow's import and start-up without its C++ start-up lines, which
  still show in full when something fails.
- `shown`: a path as it can be printed, also when its name is not valid UTF-8.
- A prompt exit: when the process ends, the garbage collector is frozen first
  (`gc.freeze`), so that the interpreter's last collections do not walk the millions of
  objects TensorFlow and Keras hold: a run that has loaded VGG16 ended about a second after its
  last line (1.03 s), now 0.12 s. Nothing is lost: every output is closed and renamed before
  `main` returns, and Python does not promise finalizers for what is still alive at exit.
"""

import argparse
import atexit
import contextlib
import functools
import gc
import importlib
import os
import re
import signal
import sys
import tempfile
import threading

atexit.register(gc.freeze)  # run at exit, before the interpreter's last collections

# Keep TensorFlow's C++ start-up chatter (CUDA probing on CPU-only machines) off the console;
# it must be set before TensorFlow loads.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

EXIT_USER_ERROR, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 1, 2, 130, 143


class UserError(Exception):
    """An error the user can fix (a wrong path or flag); `cli` prints it as one line."""

    exit_code = EXIT_USER_ERROR


class UsageError(UserError):
    """A flag argparse rejects; exit code 2, as argparse's own."""

    exit_code = EXIT_USAGE


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that it unwinds exactly as Ctrl-C does."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr, not the usage block plus the error."""

    def error(self, message):
        raise UsageError(f"{message} (see --help)")


def positive(kind):
    """An argparse type: `kind(text)`, refused unless a finite number greater than 0."""
    def parse(text):
        value = kind(text)
        if not value > 0 or value == float("inf"):  # `not >` refuses NaN too
            raise argparse.ArgumentTypeError(f"must be a finite number greater than 0, got "
                                             f"{text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in "invalid int value"
    return parse


def seed_value(text):
    """An argparse type: an int NumPy, scikit-learn and TensorFlow all take as a seed, 0 to
    2**32 - 1 (NumPy's legacy seeding, which Keras's set_random_seed calls, takes no other)."""
    value = int(text)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must be from 0 to {2**32 - 1}, got {text}")
    return value


def _raise_terminated(signum, frame):
    raise Terminated


def _redeliver_lost_interrupts(hook):
    """`sys.unraisablehook` that delivers Ctrl-C and SIGTERM again when Python dropped them.

    A signal's handler runs wherever the main thread is, also inside a finalizer (`__del__`,
    of which TensorFlow's objects run many); an exception raised there cannot propagate, so
    Python prints "Exception ignored" and the run went on: a SIGTERM to a training run was
    lost, and the run trained on. The signal is sent again, from another thread a moment later
    (raised in this hook, it would be dropped as well), and handled where the main thread is
    then. Anything else goes to `hook` as before."""
    def unraisable(info):
        if not isinstance(info.exc_value, KeyboardInterrupt):
            return hook(info)
        signum = signal.SIGTERM if isinstance(info.exc_value, Terminated) else signal.SIGINT
        # a moment later: sent at once, it would be handled before this hook returns
        resend = threading.Timer(0.01, os.kill, (os.getpid(), signum))
        resend.daemon = True
        resend.start()

    return unraisable


def cli(main):
    """Wrap a script's `main(argv)`: a `UserError`, Ctrl-C, SIGTERM or an `OSError` from the
    system (a full disk) becomes one line on stderr."""
    # the script's file name, also when a test calls main() directly
    prog = os.path.basename(sys.modules[main.__module__].__file__)

    @functools.wraps(main)
    def wrapper(argv=None):
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
        previous_hook, sys.unraisablehook = (
            sys.unraisablehook, _redeliver_lost_interrupts(sys.unraisablehook))
        try:
            return main(argv)
        except UserError as err:
            print(f"{prog}: error: {one_line(str(err))}", file=sys.stderr)
            return err.exit_code
        except Terminated:
            print(f"{prog}: terminated (SIGTERM); no output was replaced", file=sys.stderr)
            return EXIT_TERMINATED
        except KeyboardInterrupt:
            print(f"{prog}: interrupted; no output was replaced", file=sys.stderr)
            return EXIT_INTERRUPTED
        except OSError as err:
            # a full disk, a quota, a read-only or vanished folder: what the system said, in one
            # line; every output is written to a temporary file first, so none is half-written
            where = f" ({shown(err.filename)})" if err.filename else ""
            print(f"{prog}: error: {err.strerror or one_line(str(err))}{where}; no output was "
                  "left half-written", file=sys.stderr)
            return 1
        finally:
            signal.signal(signal.SIGTERM, previous)
            sys.unraisablehook = previous_hook

    return wrapper


def one_line(text):
    """`text` on one line: a library's message that spans lines (HDF5's do) would otherwise
    break the promise of one line per error."""
    return re.sub(r"\s*[\r\n]+\s*", " ", text).strip()


def first_line(err):
    """The first line of an exception's message, or its type's name when it has none: what a
    one-line error quotes of a library's."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class LazyModule:
    """Stands for the module `name` and imports it at its first attribute access.

    Python's own `importlib.util.LazyLoader` is not thread-safe before 3.12: a second thread
    touching the module while the first executes it finds it half-built (`module 'pydicom'
    has no attribute 'dcmread'`), and the loader decodes images in threads. Here the first use
    calls `importlib.import_module`, whose per-module lock makes every other thread wait until
    the module is whole.
    """

    def __init__(self, name):
        self._name = name
        self._module = None

    def __getattr__(self, attribute):
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attribute)

    def __repr__(self):
        return f"<lazily imported module {self._name!r}>"


def lazy_import(name):
    """The module `name` if it is loaded already, else a `LazyModule` that imports it on first
    use (thread-safe)."""
    return sys.modules.get(name) or LazyModule(name)


class CapturedOutput:
    """What was written to file descriptor 2 inside `capture_stderr_fd`: `text`, once the
    block has ended."""

    text = ""


@contextlib.contextmanager
def capture_stderr_fd():
    """Point file descriptor 2 at a temporary file for the block, and yield a `CapturedOutput`
    that holds what was written there once the block ends.

    C libraries (TensorFlow's C++ runtime, libpng, libjpeg) write to the descriptor itself,
    below Python's `sys.stderr`, so only this catches them. Python's own writes to stderr in
    the block are caught too: keep the block to the C calls.
    """
    captured = CapturedOutput()
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr descriptor to redirect: nothing to catch
        yield captured
        return
    # in memory where the system allows (Linux): a full TMPDIR must not stop the capture
    buffer = (os.fdopen(os.memfd_create("captured-stderr"), "w+b")
              if hasattr(os, "memfd_create") else tempfile.TemporaryFile())
    with buffer:
        os.dup2(buffer.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            buffer.seek(0)
            captured.text = buffer.read(1 << 20).decode("utf-8", "replace")


def import_tensorflow():
    """Import TensorFlow and Keras and start TensorFlow's runtime, keeping the terminal calm.

    On a machine without a GPU, TensorFlow 2.21's C++ side writes about seven lines to stderr as
    it starts (`absl::InitializeLog`, oneDNN, "could not find cuda drivers", a `cuInit` error
    printed twice), whatever TF_CPP_MIN_LOG_LEVEL says (tensorflow/tensorflow#100442). They
    are caught (`capture_stderr_fd`) while TensorFlow imports and initialises, and shown in
    full when that fails, or when there is a GPU (its lines then matter); otherwise dropped.
    """
    if getattr(import_tensorflow, "done", False):
        return
    gpus, failed = [], True
    try:
        with capture_stderr_fd() as captured:
            import keras  # noqa: F401 (imported here, with fd 2 redirected)
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")  # initialises the runtime (cuInit)
            failed = False
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM while TensorFlow starts: its lines are noise
        failed = False
        raise
    finally:
        if failed or gpus:
            sys.stderr.write(captured.text)
            sys.stderr.flush()
    import_tensorflow.done = True


def shown(path):
    """`path` as it can be printed safely: bytes of a name that are not UTF-8 (which Python
    hands over as lone surrogates, `'x\\udcff.jpeg'`) become U+FFFD, and characters that are
    not printable (a newline, an ANSI escape, a bidirectional override) are written as their
    escapes (`\\n`, `\\x1b`), so that a file's name can neither forge an output line nor
    reach the terminal as a command. JSON and CSV keep the real name."""
    text = os.fsencode(path).decode("utf-8", errors="replace")
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)


def warn_if_not_utf8(paths):
    """A warning for each of `paths` whose name is not valid UTF-8: it works, but prints with
    replacement characters, which is worth knowing when a printed name does not match."""
    for path in paths:
        if os.fsencode(path).decode("utf-8", errors="replace") != path:
            print(f"[WARNING] {shown(path)}: the name is not valid UTF-8; it is shown with "
                  "U+FFFD here and kept as it is in the files this run writes", file=sys.stderr)
