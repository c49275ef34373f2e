"""Downloads against a real HTTP server on loopback that fails the ways district servers do."""

import hashlib
import os
import time

import pytest

from countysync_assets.resources.release_downloader import DownloadError, ReleaseDownloader
from tests.release_server import ReleaseServer, Served

BODY = os.urandom(3_000_000)  # three 1 MB chunks: a drop mid-body leaves a real partial file
SHA = hashlib.sha256(BODY).hexdigest()
FAST = ReleaseDownloader(backoff_seconds=0.01, max_backoff_seconds=0.05, attempts=4)


@pytest.fixture
def server():
    running = ReleaseServer().start()
    yield running
    running.stop()


def fetch(server, tmp_path, expected=None, downloader=FAST, logs=None):
    dest = tmp_path / "Real_acct_owner.zip"
    log = logs.append if logs is not None else (lambda _: None)
    return downloader.fetch_all([("real_acct_owner", server.url("/r.zip"), dest, expected)],
                                log)[0], dest


def test_503_then_200_is_retried(server, tmp_path):
    server.files["/r.zip"] = Served(BODY, fail_first=2)
    logs = []
    result, dest = fetch(server, tmp_path, logs=logs)
    assert dest.read_bytes() == BODY and result.sha256 == SHA
    assert len(server.gets("/r.zip")) == 3
    assert any("try 1 of 4 failed (HTTP 503)" in line for line in logs)


def test_dropped_connection_resumes_with_range_to_the_exact_bytes(server, tmp_path):
    server.files["/r.zip"] = Served(BODY, drop_after=1_500_000)
    result, dest = fetch(server, tmp_path, expected=SHA)
    assert dest.read_bytes() == BODY
    second = server.gets("/r.zip")[1]
    assert second["Range"].startswith("bytes=") and result.resumed_from > 0
    assert second["Range"] == f"bytes={result.resumed_from}-"
    assert not dest.with_name(dest.name + ".part").exists()


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    server.files["/r.zip"] = Served(BODY, drop_after=1_500_000, ignore_range=True)
    result, dest = fetch(server, tmp_path, expected=SHA)
    assert dest.read_bytes() == BODY and result.resumed_from == 0
    assert "Range" in server.gets("/r.zip")[1]


def test_wrong_checksum_fails_and_publishes_nothing(server, tmp_path):
    server.files["/r.zip"] = Served(BODY)
    with pytest.raises(DownloadError, match=r"SHA-256 of the download is .* expects 0{64}"):
        fetch(server, tmp_path, expected="0" * 64)
    assert not (tmp_path / "Real_acct_owner.zip").exists()
    assert not (tmp_path / "Real_acct_owner.zip.part").exists()


def test_unchanged_file_is_not_downloaded_again_and_a_republished_one_is(server, tmp_path):
    server.files["/r.zip"] = Served(BODY)
    _first, dest = fetch(server, tmp_path)
    mtime = dest.stat().st_mtime_ns
    again, _ = fetch(server, tmp_path)
    assert again.skipped and again.sha256 == SHA and dest.stat().st_mtime_ns == mtime
    assert server.gets("/r.zip")[-1]["If-None-Match"] == server.files["/r.zip"].etag
    server.files["/r.zip"] = Served(BODY[::-1])  # re-published under the same name
    third, _ = fetch(server, tmp_path)
    assert not third.skipped and dest.read_bytes() == BODY[::-1]


def test_missing_file_fails_at_once_with_what_to_do(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404; check the URL template") as err:
        fetch(server, tmp_path)
    assert not err.value.transient
    assert len(server.gets("/r.zip")) == 1


def test_server_down_on_every_try_is_transient(server, tmp_path):
    server.files["/r.zip"] = Served(BODY, fail_first=10)
    with pytest.raises(DownloadError, match="answered HTTP 503 on each of 4 tries") as err:
        fetch(server, tmp_path)
    assert err.value.transient


def test_bandwidth_limit_and_parallel_downloads(server, tmp_path):
    server.files["/a.zip"] = Served(BODY[:200_000])
    server.files["/b.zip"] = Served(BODY[200_000:400_000])
    limited = ReleaseDownloader(bandwidth_limit=1_000_000, parallel=2)
    jobs = [(n, server.url(f"/{n}.zip"), tmp_path / f"{n}.zip", None) for n in ("a", "b")]
    started = time.monotonic()
    results = limited.fetch_all(jobs, lambda _: None)
    assert [r.bytes for r in results] == [200_000, 200_000]
    # 400,000 bytes at 1 MB/s: the shared limit held both to at least 0.4 s in all (a file
    # started late on a busy machine takes less on its own)
    assert time.monotonic() - started >= 0.39
