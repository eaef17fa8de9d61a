"""covid19xray.progress: a live bar on a terminal; in a log, plain lines at most every so often,
and nothing at all for a short step."""

import io

from covid19xray import progress as progress_module
from covid19xray.progress import progress, say


class Terminal(io.StringIO):
    def isatty(self):
        return True


def run(monkeypatch, stream, steps=5):
    monkeypatch.setattr("sys.stderr", stream)
    with progress(steps, "decoding") as bar:
        for _ in range(steps):
            bar.update(1)
    return stream.getvalue()


def test_a_short_step_prints_nothing_in_a_log(monkeypatch):
    assert run(monkeypatch, io.StringIO()) == ""


def test_a_long_step_prints_plain_lines_in_a_log(monkeypatch):
    # as if every update came after the interval: one line each, then no repeat of the last
    monkeypatch.setattr(progress_module, "LOG_INTERVAL", 0)
    lines = run(monkeypatch, io.StringIO()).splitlines()
    assert lines[0].startswith("decoding:") and lines[-1].startswith("decoding: 100%|")
    assert "5/5" in lines[-1] and len(lines) == len(set(lines)) >= 2
    assert not any("\r" in line or "\x1b" in line for line in lines)


def test_a_terminal_gets_a_live_bar_that_leaves_no_trace(monkeypatch):
    monkeypatch.setattr(progress_module, "TERMINAL_DELAY", 0)
    out = run(monkeypatch, Terminal())
    assert out.startswith("\rdecoding:") and "\n" not in out  # redrawn in place
    assert out.split("\r")[-2].strip() == "" and out.endswith("\r")  # and blanked at the end


def test_lines_printed_under_a_live_bar_reach_stdout_whole(monkeypatch):
    monkeypatch.setattr(progress_module, "TERMINAL_DELAY", 0)
    terminal, stdout = Terminal(), io.StringIO()
    monkeypatch.setattr("sys.stderr", terminal)
    monkeypatch.setattr("sys.stdout", stdout)
    with progress(3, "predicting") as bar:
        for k in range(3):
            say(f"x{k}.png: normal")
            bar.update(1)
    # stdout holds the lines and nothing of the bar; the bar is drawn again after each line
    assert stdout.getvalue() == "x0.png: normal\nx1.png: normal\nx2.png: normal\n"
    assert terminal.getvalue().count("predicting:") >= 4
