"""Downloading files of a collection over HTTP(S): only those asked for, checked, cached.

`build_covid_dataset.py --covid https://...` reads Cohen's collection from the raw-file URL of
its repository instead of a 1 GB clone: `metadata.csv`, then only the selected images.

- **requests**, with urllib3's `Retry`: a timeout on every request, and `RETRIES` retries with
  exponential backoff on connection errors and on 429/5xx answers.
- **Checked before it is kept**: the body is streamed into a temporary file with a size bound,
  then `check(path)` (the builders' content check: signature, pixel limit, decodable) must pass.
  An HTML error page served with status 200 is refused, never saved as `x.png`.
- **Cached** under `<cache folder>/downloads/<hash of the base URL>/<the file's path>`, each file
  renamed into place only when complete and checked: an interrupted download leaves nothing, and
  a rerun downloads nothing it already has. Delete the folder to fetch everything anew.
"""

import hashlib
import os
import sys
import urllib.parse

from .cli import UserError, first_line, lazy_import, shown
from .images import MAX_FILE_BYTES
from .writing import atomic_output

requests = lazy_import("requests")
urllib3 = lazy_import("urllib3")

# (connect, read) seconds: a stalled server ends in a clear failure, not a hang
TIMEOUT = (10, 60)
RETRIES = 3
BACKOFF = 0.5
CHUNK = 1 << 16


class Missing(Exception):
    """A file that could not be downloaded or was refused; its text says why."""


class Refused(Missing):
    """A file downloaded whole whose content is refused (an HTML page named x.png)."""


def is_url(text):
    return text.lower().startswith(("http://", "https://"))


def _session(backoff):
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    retry = Retry(total=RETRIES, connect=RETRIES, read=RETRIES, backoff_factor=backoff,
                  status_forcelist=(429, 500, 502, 503, 504), allowed_methods=("GET",),
                  raise_on_status=False)
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class Remote:
    """The files under `base_url`, downloaded on demand into a cache folder."""

    def __init__(self, base_url, cache_folder):
        self.base = base_url.rstrip("/") + "/"
        digest = hashlib.sha256(self.base.encode()).hexdigest()[:16]
        self.folder = os.path.join(cache_folder, "downloads", digest)
        self.session = _session(BACKOFF)
        self.downloaded = 0  # files fetched over the network in this run

    def url(self, relative):
        return self.base + urllib.parse.quote(relative)

    def cached(self, relative):
        """Where `relative` is kept; it never climbs out of the cache folder."""
        parts = [part for part in relative.replace("\\", "/").split("/") if part not in ("", ".")]
        if ".." in parts:
            raise Missing("a path that climbs out of the collection")
        return os.path.join(self.folder, *parts)

    def fetch(self, relative, check=None, limit=MAX_FILE_BYTES, announce=None):
        """The local path of `relative`, downloaded unless cached. `check(path)` returns None
        or the reason to refuse the file. Raises `Missing` for a file that is not there or is
        refused, `UserError` when the server cannot be reached at all."""
        path = self.cached(relative)
        if os.path.isfile(path):
            return path
        url = self.url(relative)
        if announce:
            announce(url)
        try:
            response = self.session.get(url, stream=True, timeout=TIMEOUT)
        except requests.exceptions.RequestException as err:
            # after its retries, urllib3 reports a read timeout as the reason of a connection
            # error: the server is there, but does not send this file
            reason = getattr(err.args[0], "reason", None) if err.args else None
            if isinstance(err, requests.exceptions.ReadTimeout) or isinstance(
                    reason, urllib3.exceptions.ReadTimeoutError):
                raise Missing(f"no answer within {TIMEOUT[1]} s, {RETRIES} retries") from None
            raise Unreachable(url, err) from None
        with response:
            if response.status_code != 200:
                raise Missing(f"HTTP {response.status_code} {response.reason or ''}".strip())
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            with atomic_output(path) as temporary:
                size = 0
                try:
                    with open(temporary, "wb") as f:
                        for chunk in response.iter_content(CHUNK):
                            size += len(chunk)
                            if size > limit:
                                raise Missing(f"larger than {limit / 2**30:.0f} GiB")
                            f.write(chunk)
                except requests.exceptions.RequestException as err:
                    raise Missing(f"the download broke off ({type(err).__name__})") from None
                reason = check(temporary) if check else None
                if reason is not None:
                    raise Refused(reason)
        self.downloaded += 1
        return path


class Unreachable(UserError):
    """No answer at all from the server: one line, and the run stops."""

    def __init__(self, url, err):
        reason = first_line(err)
        if len(reason) > 200:
            reason = reason[:200] + "..."
        super().__init__(f"cannot download {url}: {type(err).__name__} ({reason}); check the "
                         "address and the network connection")


def warn_missing(url, reason):
    print(f"[WARNING] not using {shown(url)}: {reason}", file=sys.stderr)
