"""CSV cells that a spreadsheet opens as text, never as a formula.

The manifest is the dataset's attribution list and predictions.csv a result table: people open
both in a spreadsheet. A cell that begins with `=`, `+`, `-`, `@`, a tab or a carriage return is
run as a formula there (OWASP: CSV injection), and file names, Kaggle names and Cohen's
`patientid`, `url` and `license` cells come from outside. `quoted` prefixes such a cell with `'`,
as OWASP advises; a cell that already begins with `'` gets one too, so that `unquoted`, which our
own readers apply, gives back exactly what was written.
"""

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def quoted(cell):
    """`cell` as written to a CSV file: `'` before one that a spreadsheet would run."""
    text = str(cell)
    return "'" + text if text.startswith(FORMULA_STARTS + ("'",)) else text


def unquoted(cell):
    """The value `quoted` was given."""
    return cell[1:] if cell.startswith("'") else cell
