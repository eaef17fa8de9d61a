"""Progress of the steps that can take more than a few seconds, on a terminal and in a log.

tqdm draws the bar, on stderr, so that stdout keeps only what a run reports. A bar appears only
for a step that lasts longer than `TERMINAL_DELAY` seconds, and leaves no trace when it ends.
When stderr is not a terminal (CI, a log file, `| tee`), a step shorter than `LOG_INTERVAL`
seconds prints nothing, and a longer one a plain line (no carriage return, no colour) at most
every `LOG_INTERVAL` seconds, then its last.
"""

import sys

from tqdm import tqdm

TERMINAL_DELAY = 2
LOG_INTERVAL = 10


class _PlainLines:
    """A file for tqdm that turns each redraw into one line, and prints no line twice."""

    def __init__(self, stream):
        self.stream, self.last = stream, None

    def write(self, text):
        for part in text.replace("\r", "\n").split("\n"):
            part = part.strip()
            if part and part != self.last:
                self.stream.write(part + "\n")
                self.last = part

    def flush(self):
        self.stream.flush()


def progress(total, what, unit="image"):
    """A progress bar for `total` units of `what` (`decoding`, `features`...): use it as a
    context manager and call `.update(n)`."""
    stream = sys.stderr
    if stream.isatty():
        return tqdm(total=total, desc=what, unit=unit, file=stream, delay=TERMINAL_DELAY,
                    leave=False, dynamic_ncols=True)
    return tqdm(total=total, desc=what, unit=unit, file=_PlainLines(stream), delay=LOG_INTERVAL,
                mininterval=LOG_INTERVAL, ascii=True, ncols=80)


def say(line, file=None):
    """Print `line` on stdout (or `file`) without breaking a live bar on the terminal (tqdm
    lifts the bar, prints, and draws it again)."""
    tqdm.write(line, file=file or sys.stdout)


def duration(seconds):
    """`12 s`, `2.3 min` or `5.0 h`: how long, as a person reads it."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
