"""CSV cells that a spreadsheet opens as text, never as a formula.

The manifest is the dataset's attribution list and predictions.csv a result table: people open
both in a spreadsheet. A cell that begins with `=`, `+`, `-`, `@`, a tab or a carriage return is
run as a formula there (OWASP: CSV injection), and file names, Kaggle names and Cohen's
`patientid`, `url` and `license` cells come from outside. `quoted` prefixes such a cell with `'`,
as OWASP advises; a cell that already begins with `'` gets one too, so that `unquoted`, which our
own readers apply, gives back exactly what was written. Every CSV the project writes goes
through `Writer`, so no writer can forget it.
"""

import csv

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def quoted(cell):
    """`cell` as written to a CSV file: `'` before one that a spreadsheet would run."""
    text = str(cell)
    return "'" + text if text.startswith(FORMULA_STARTS + ("'",)) else text


def unquoted(cell):
    """The value `quoted` was given."""
    return cell[1:] if cell.startswith("'") else cell


class Writer:
    """`csv.writer(f)` whose every cell is `quoted`."""

    def __init__(self, f):
        self._writer = csv.writer(f)

    def writerow(self, cells):
        self._writer.writerow([quoted(cell) for cell in cells])

    def writerows(self, rows):
        for cells in rows:
            self.writerow(cells)
