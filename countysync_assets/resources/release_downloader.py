"""Downloads of a district's release files: retried, resumed, verified, skipped when unchanged.

Districts serve multi-hundred-MB ZIPs from ordinary web servers that drop connections, answer
503 under load and publish no checksums. So a download goes into ``<file>.part``; a dropped
connection is retried (exponential backoff with jitter, ``Retry-After`` honoured on 429/503)
and resumed with an HTTP Range request from the bytes already there; a server that ignores
Range restarts the file cleanly. The SHA-256 of every download is recorded next to it
(``<file>.json``, with the ETag, Last-Modified and size) and checked against the district
file's value when it gives one; the file is published by rename. A file whose ETag,
Last-Modified and size are unchanged is not downloaded again. ``file://`` URLs (the demo, a
mirrored share) go through the same steps.
"""

import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import unquote, urlparse

import httpx
from dagster import ConfigurableResource
from pydantic import Field
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

CHUNK = 1024 * 1024
PROGRESS_SECONDS = 5.0
USER_AGENT = "countysync (appraisal bulk files; https://github.com/countysync)"


class DownloadError(RuntimeError):
    """A download failed; the message says which file, why and what to do. ``transient``:
    the server or network failed on every try, so trying later may succeed."""

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient


class RetryableStatus(Exception):
    """A 5xx or 429 answer: worth another try, after ``retry_after`` seconds if given."""

    def __init__(self, status: int, retry_after: float | None):
        super().__init__(f"HTTP {status}")
        self.status, self.retry_after = status, retry_after


@dataclass
class Downloaded:
    """What one download left: the file, its digest, and whether anything moved."""

    name: str
    path: str
    bytes: int
    sha256: str
    skipped: bool
    resumed_from: int
    seconds: float
    etag: str | None = None
    last_modified: str | None = None


def _transient(err: BaseException) -> bool:
    return isinstance(err, (httpx.TransportError, RetryableStatus))


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (a number or an HTTP date)."""
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        try:
            return max(parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
        except (TypeError, ValueError):
            return None


class _Throttle:
    """A bandwidth limit shared by every download of a batch (bytes per second, 0 = none)."""

    def __init__(self, limit: int):
        self.limit, self.lock = limit, threading.Lock()
        self.start, self.sent = time.monotonic(), 0

    def take(self, size: int) -> None:
        if not self.limit:
            return
        with self.lock:
            self.sent += size
            due = self.start + self.sent / self.limit
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)


class _Progress:
    """Logs bytes, rate and ETA every few seconds."""

    def __init__(self, name: str, log: Callable[[str], None], start: int, total: int | None):
        self.name, self.log, self.done, self.total = name, log, start, total
        self.first, self.started = start, time.monotonic()
        self.last = self.started

    def add(self, size: int) -> None:
        self.done += size
        now = time.monotonic()
        if now - self.last < PROGRESS_SECONDS:
            return
        self.last = now
        rate = (self.done - self.first) / max(now - self.started, 1e-6)
        mb = self.done / 1e6
        if self.total:
            eta = (self.total - self.done) / rate if rate else float("inf")
            self.log(f"{self.name}: {mb:,.1f} of {self.total / 1e6:,.1f} MB "
                     f"({100 * self.done / self.total:.0f}%), {rate / 1e6:,.1f} MB/s, "
                     f"ETA {eta:,.0f} s")
        else:
            self.log(f"{self.name}: {mb:,.1f} MB, {rate / 1e6:,.1f} MB/s")


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def recorded_sha256(path: Path) -> str:
    """The SHA-256 the download of ``path`` recorded (the file is the verified download)."""
    return _read_json(_sidecar(path))["sha256"]


def _unchanged(known: dict) -> "Downloaded":
    """The earlier download, reported again: nothing was fetched."""
    return Downloaded(**{**known, "skipped": True, "resumed_from": 0, "seconds": 0.0})


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_json(path: Path, data: dict) -> None:
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(json.dumps(data, indent=1))
    os.replace(temp, path)


def _sha256(path: Path) -> "hashlib._Hash":
    """A running SHA-256 of the bytes already in ``path`` (a resumed download goes on from it)."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
    return digest


class ReleaseDownloader(ConfigurableResource):
    """Fetches release files over https, http or file:// (retry, resume, verify, skip)."""

    timeout_seconds: float = Field(default=60.0, gt=0, description="per connect/read")
    attempts: int = Field(default=8, ge=1, description="tries per file before giving up")
    backoff_seconds: float = Field(default=2.0, ge=0, description="first wait between tries")
    max_backoff_seconds: float = Field(default=120.0, ge=0)
    parallel: int = Field(default=2, ge=1, description="files downloaded at once")
    bandwidth_limit: int = Field(default=0, ge=0, description="bytes/s for all files; 0 = none")

    def fetch_all(self, jobs: list[tuple[str, str, Path, str | None]],
                  log: Callable[[str], None]) -> list[Downloaded]:
        """Download ``(name, url, destination, expected sha256)`` jobs, a few at a time."""
        throttle = _Throttle(self.bandwidth_limit)
        with httpx.Client(timeout=self.timeout_seconds, follow_redirects=True,
                          headers={"User-Agent": USER_AGENT}) as client, \
                ThreadPoolExecutor(max_workers=self.parallel) as pool:
            futures = [pool.submit(self._fetch, client, throttle, log, *job) for job in jobs]
            return [f.result() for f in futures]

    def signature(self, url: str) -> str | None:
        """ETag, Last-Modified and size of a published file (None if not published yet)."""
        if urlparse(url).scheme == "file":
            path = Path(unquote(urlparse(url).path))
            return f"None/{path.stat().st_mtime_ns}/{path.stat().st_size}" if path.exists() \
                else None
        with httpx.Client(timeout=self.timeout_seconds, follow_redirects=True,
                          headers={"User-Agent": USER_AGENT}) as client:
            response = client.head(url)
        if response.status_code in (403, 404, 410):
            return None
        response.raise_for_status()
        h = response.headers
        return f"{h.get('ETag')}/{h.get('Last-Modified')}/{h.get('Content-Length')}"

    @staticmethod
    def recorded(path: Path) -> str | None:
        """The signature of the file last downloaded to ``path`` (None if there is none)."""
        known = _read_json(_sidecar(path)) if path.exists() else {}
        return f"{known.get('etag')}/{known.get('last_modified')}/{known.get('bytes')}" \
            if known else None

    def _wait(self, state) -> float:
        err = state.outcome.exception()
        if isinstance(err, RetryableStatus) and err.retry_after is not None:
            return min(err.retry_after, self.max_backoff_seconds)
        return wait_exponential_jitter(multiplier=self.backoff_seconds,
                                       max=self.max_backoff_seconds,
                                       jitter=self.backoff_seconds)(state)

    def _fetch(self, client: httpx.Client, throttle: _Throttle, log: Callable[[str], None],
               name: str, url: str, dest: Path, expected: str | None) -> Downloaded:
        dest.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        known = _read_json(_sidecar(dest)) if dest.exists() else {}
        if expected and known.get("sha256") == expected:
            log(f"{name}: unchanged (SHA-256 as the district file expects); not downloaded.")
            return _unchanged(known)

        def attempt_log(state) -> None:
            log(f"{name}: try {state.attempt_number} of {self.attempts} failed "
                f"({state.outcome.exception()}); trying again in {state.upcoming_sleep:.1f} s.")

        retrying = Retrying(stop=stop_after_attempt(self.attempts), wait=self._wait,
                            retry=retry_if_exception(_transient), before_sleep=attempt_log,
                            reraise=True)
        try:
            result = retrying(self._attempt, client, throttle, log, name, url, dest, known)
        except RetryableStatus as err:
            raise DownloadError(f"{name}: {url} answered {err} on each of {self.attempts} "
                                "tries; the district's server is down or busy: try again "
                                "later.", transient=True) from None
        except httpx.HTTPError as err:
            raise DownloadError(f"{name}: could not download {url} after {self.attempts} tries "
                                f"({type(err).__name__}: {err}); check the network and the URL, "
                                "then run again: the bytes already here are kept.",
                                transient=True) from None
        except OSError as err:
            raise DownloadError(f"{name}: cannot read or write {err.filename}: "
                                f"{err.strerror}") from None
        if result.skipped:
            log(f"{name}: unchanged since the last download (ETag/Last-Modified/size); "
                "not downloaded.")
            return result
        if expected and result.sha256 != expected:
            dest.with_name(dest.name + ".part").unlink(missing_ok=True)
            raise DownloadError(f"{name}: SHA-256 of the download is {result.sha256}, the "
                                f"district file expects {expected}: the file is corrupt or was "
                                "re-published; download again, or update sha256 in the district "
                                "file if the district re-published it.")
        os.replace(dest.with_name(dest.name + ".part"), dest)
        result.seconds = time.monotonic() - started
        _write_json(_sidecar(dest), asdict(result))
        _sidecar(dest.with_name(dest.name + ".part")).unlink(missing_ok=True)
        rate = result.bytes / max(result.seconds, 1e-6) / 1e6
        log(f"{name}: {result.bytes / 1e6:,.1f} MB in {result.seconds:.1f} s ({rate:,.1f} MB/s)"
            + (f", resumed at {result.resumed_from / 1e6:,.1f} MB" if result.resumed_from else "")
            + f"; SHA-256 {result.sha256}.")
        return result

    def _attempt(self, client: httpx.Client, throttle: _Throttle, log: Callable[[str], None],
                 name: str, url: str, dest: Path, known: dict) -> Downloaded:
        """One try: a conditional, ranged GET into ``.part`` (or a copy for file://)."""
        part = dest.with_name(dest.name + ".part")
        if urlparse(url).scheme == "file":
            return self._copy(Path(unquote(urlparse(url).path)), throttle, log, name, dest, part,
                              known)
        have = part.stat().st_size if part.exists() else 0
        started_as = _read_json(_sidecar(part))
        validator = started_as.get("etag") or started_as.get("last_modified")
        headers = {}
        if have and validator:
            headers |= {"Range": f"bytes={have}-", "If-Range": validator}
        elif have:
            headers["Range"] = f"bytes={have}-"
        if known.get("etag"):
            headers["If-None-Match"] = known["etag"]
        if known.get("last_modified"):
            headers["If-Modified-Since"] = known["last_modified"]
        with client.stream("GET", url, headers=headers) as response:
            if response.status_code == 304:
                return _unchanged(known)
            if response.status_code == 429 or response.status_code >= 500:
                raise RetryableStatus(response.status_code,
                                      _retry_after(response.headers.get("Retry-After")))
            if response.status_code == 416:  # the .part is not a prefix of this file: restart
                part.unlink(missing_ok=True)
                raise httpx.RemoteProtocolError("range not satisfiable; restarting the file")
            if response.status_code not in (200, 206):
                raise DownloadError(f"{name}: {url} answered HTTP {response.status_code}; "
                                    "check the URL template and the year in the district file.")
            etag, modified = response.headers.get("ETag"), response.headers.get("Last-Modified")
            size = int(response.headers.get("Content-Length", -1))
            if response.status_code == 200 and known and dest.exists() and (
                    (etag and etag == known.get("etag")) or
                    (not etag and modified and modified == known.get("last_modified")
                     and size == known.get("bytes"))):
                return _unchanged(known)
            start = have if response.status_code == 206 else 0
            if response.status_code == 206 and not response.headers.get(
                    "Content-Range", "").startswith(f"bytes {have}-"):
                part.unlink(missing_ok=True)
                raise httpx.RemoteProtocolError("the server sent another range; restarting")
            if start:
                log(f"{name}: resuming at {start / 1e6:,.1f} MB.")
            elif have:
                log(f"{name}: the server ignored the range request; downloading from the start.")
            _write_json(_sidecar(part), {"etag": etag, "last_modified": modified})
            total = start + size if size >= 0 else None
            digest = _sha256(part) if start else hashlib.sha256()
            progress = _Progress(name, log, start, total)
            with part.open("r+b" if start else "wb") as out:
                out.seek(start)
                out.truncate()
                for chunk in response.iter_bytes(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    progress.add(len(chunk))
                    throttle.take(len(chunk))
        return Downloaded(name=name, path=str(dest), bytes=progress.done,
                          sha256=digest.hexdigest(), skipped=False, resumed_from=start,
                          seconds=0.0, etag=etag, last_modified=modified)

    def _copy(self, source: Path, throttle: _Throttle, log: Callable[[str], None], name: str,
              dest: Path, part: Path, known: dict) -> Downloaded:
        """A file:// download: skipped when size and modification time are unchanged."""
        try:
            stat = source.stat()
        except FileNotFoundError:
            raise DownloadError(f"{name}: {source} does not exist; check the URL template and "
                                "the year.") from None
        modified = str(stat.st_mtime_ns)
        if known and dest.exists() and known.get("last_modified") == modified \
                and known.get("bytes") == stat.st_size:
            return _unchanged(known)
        digest, progress = hashlib.sha256(), _Progress(name, log, 0, stat.st_size)
        with source.open("rb") as src, part.open("wb") as out:
            while chunk := src.read(CHUNK):
                out.write(chunk)
                digest.update(chunk)
                progress.add(len(chunk))
                throttle.take(len(chunk))
        shutil.copystat(source, part)
        return Downloaded(name=name, path=str(dest), bytes=progress.done,
                          sha256=digest.hexdigest(), skipped=False, resumed_from=0, seconds=0.0,
                          etag=None, last_modified=modified)
