"""Cohen's COVID-19 image collection (github.com/ieee8023/covid-chestxray-dataset): a
`metadata.csv` of one row per image (its finding, view, patient, licence and source) and the
images in `images/` (or the folder a row names), read from a checkout or downloaded from the
raw-file URL of one.

The header of `metadata.csv` changed between versions (`Patientid` vs `patientid`, `" url"`, a
trailing empty column, a `folder` column since June 2020), and copies re-saved by spreadsheets
come in other encodings and separators: every one of them reads here. A finding is
hierarchical (`Pneumonia/Viral/COVID-19`): its labels are each part (`finding_labels`).
"""

import codecs
import csv
import os
import re
import sys

from .cli import UserError, shown
from .collection import Collection, Film
from .fetch import Missing, Remote, is_url

REQUIRED_COLUMNS = ("finding", "view", "filename")
# the raw-file root of Cohen's repository: metadata.csv and images/ are under it
COHEN_RAW_URL = "https://raw.githubusercontent.com/ieee8023/covid-chestxray-dataset/master"
# metadata.csv is about 1 MB today
METADATA_BYTES = 100 << 20

def read_text(path):
    """The text of `path` in the encodings spreadsheet programs save CSV files in.

    UTF-8 (with or without a byte-order mark), UTF-16 with a byte-order mark, else Windows-1252,
    which decodes any byte: a stray Latin-1 byte in a free-text note (seen in real copies) must
    not stop the build, and the columns this script reads are plain ASCII in every encoding.
    """
    with open(path, "rb") as f:
        data = f.read(METADATA_BYTES + 1)  # bounded as a download is
    if len(data) > METADATA_BYTES:
        raise UserError(f"{path!r} is larger than {METADATA_BYTES >> 20} MB, far above any "
                        "metadata.csv of Cohen's collection (about 1 MB); not read")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16", errors="replace")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def read_metadata(path, shown_as=None):
    """Rows of `<covid>/metadata.csv` as dicts keyed by trimmed, lower-cased column names.

    The header changed between versions (`Patientid` vs `patientid`, `" url"`, a trailing empty
    column, a `folder` column since June 2020); normalising the names makes all of them work.
    A file re-saved by a spreadsheet in another encoding, or with `;` or tabs between the
    columns, works too.
    """
    text = read_text(path)
    path = shown_as or path
    first_line = text.split("\n", 1)[0]
    try:
        dialect = csv.Sniffer().sniff(first_line, delimiters=",;\t")
    except csv.Error:  # one column, or an empty file: say what is wrong below
        dialect = csv.excel
    reader = csv.reader(text.splitlines(), delimiter=dialect.delimiter)
    try:
        header = next(reader, None)
        if header is None or not any(name.strip() for name in header):
            raise UserError(f"{path} is empty")
        columns = [name.strip().lower() for name in header]
        missing = [name for name in REQUIRED_COLUMNS if name not in columns]
        if missing:
            raise UserError(f"{path} has no {', '.join(missing)} column; its header is: "
                            f"{first_line.strip()[:300]}")
        rows = [dict(zip(columns, [value.strip() for value in row])) for row in reader if row]
    except csv.Error as err:  # a NUL byte, a field over csv's size limit
        raise UserError(f"{path} line {reader.line_num}: not a readable CSV file ({err})") from None
    if not rows:
        raise UserError(f"{path} has a header but no rows")
    return columns, rows

def finding_labels(finding):
    """The labels of a finding: `Pneumonia/Viral/COVID-19` -> {pneumonia, viral, covid-19}."""
    return {label.strip().casefold() for label in re.split(r"[/,]", finding) if label.strip()}

def image_relative(row):
    """A row's image as `<folder>/<filename>` inside the collection (`images/` when the row has
    no folder), or None when it is refused: absolute, or climbing out with `..`."""
    folder = row.get("folder") or "images"
    filename = row.get("filename", "")
    parts = re.split(r"[/\\]", folder) + re.split(r"[/\\]", filename)
    if os.path.isabs(folder) or os.path.isabs(filename) or ".." in parts \
            or "\0" in folder + filename:  # no file has a NUL in its name; os would raise
        return None
    return f"{folder}/{filename}"

def source_url(row):
    """Where a row's image was published: its `url`, else its DOI as a link, else ''."""
    if row.get("url"):
        return row["url"]
    return f"https://doi.org/{row['doi']}" if row.get("doi") else ""

def resolve_sources(rows, covid=None):
    """The distinct image files of `rows`, sorted, with counts of what was dropped.

    In a checkout (`covid`), the existing files, keyed by their resolved path so that one file
    listed twice (or through a link) is copied once. Without one (a URL), the distinct
    `folder/filename` of the rows: a download cannot be looked at before it is chosen, so
    missing files are found while downloading. Returns (sources, counts, rows_of): `rows_of`
    maps each source to the first row naming it.
    """
    sources, counts, rows_of = {}, {"missing files": 0, "refused": 0, "duplicates": 0}, {}
    for row in rows:
        relative = image_relative(row)
        if relative is None:
            counts["refused"] += 1
            print(f"[WARNING] refusing '{shown(row.get('filename', ''))}': not a file inside "
                  "--covid", file=sys.stderr)
            continue
        # in a checkout: <covid>/<folder>/<filename>. Links inside it are followed (images/ may
        # live on another disk); what a link leads to is checked when it is copied
        source = relative if covid is None else os.path.join(covid, *relative.split("/"))
        if covid is not None and not os.path.isfile(source):
            counts["missing files"] += 1
            continue
        identity = source if covid is None else os.path.realpath(source)
        if identity in sources:
            counts["duplicates"] += 1
        else:
            sources[identity] = source
            rows_of[source] = row
    return sorted(sources.values()), counts, rows_of

def patient_of(path, row):
    """A row's `patientid` (`Patientid` in 2020 files), or the file name when it has none."""
    return row.get("patientid") or os.path.basename(path)


class CohenCollection(Collection):
    """Cohen's collection at `covid`: a checkout, or the raw-file URL of one (`remote`, its
    downloads cached in `cache_folder`). Its rows are read when asked (`read_metadata`); the
    films of chosen rows are found when asked (`locate`): each one's finding, patient (its
    `patientid`, else its file name), age, view, licence and source URL."""

    name = "cohen"

    def __init__(self, covid, cache_folder):
        super().__init__()
        self.covid = covid
        self.remote = Remote(covid, cache_folder) if is_url(covid) else None

    def read_metadata(self):
        """(columns, rows, the name messages give the file) of its metadata.csv, downloaded
        (cached) from a URL."""
        path, shown_as = self.metadata_file()
        columns, rows = read_metadata(path, shown_as)
        return columns, rows, shown_as

    def metadata_file(self):
        """The path of metadata.csv, and the name messages give it: in the checkout, or
        downloaded (cached) from the URL."""
        if self.remote is None:
            path = os.path.join(self.covid, "metadata.csv")
            if not os.path.isfile(path):
                raise UserError(f"--covid {self.covid!r} has no metadata.csv; point it at a "
                                "checkout of Cohen's covid-chestxray-dataset")
            return path, path
        try:
            return (self.remote.fetch("metadata.csv", limit=METADATA_BYTES),
                    self.remote.url("metadata.csv"))
        except Missing as err:
            raise UserError(f"--covid {self.covid!r}: {self.remote.url('metadata.csv')}: {err}; "
                            "give the URL of a checkout's root, where metadata.csv and images/ "
                            "are") from None

    def locate(self, rows):
        """The distinct image files of `rows` as films, sorted by path (they join `films`),
        with counts of what was dropped (`resolve_sources`)."""
        sources, counts, rows_of = resolve_sources(rows, None if self.remote else self.covid)
        found = [Film(path, rows_of[path].get("finding", ""), patient_of(path, rows_of[path]),
                      self.name, {"age": rows_of[path].get("age", ""),
                                  "view": rows_of[path].get("view", ""),
                                  "license": rows_of[path].get("license", ""),
                                  "url": source_url(rows_of[path])})
                 for path in sources]
        self.films.extend(found)
        return found, counts
