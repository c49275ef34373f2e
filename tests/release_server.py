"""A real HTTP server on loopback that serves release files and misbehaves on request.

Per path: ``fail_first`` answers 503 (with Retry-After: 0) that many times; ``drop_after``
sends the full Content-Length but closes the connection after that many bytes, once;
``ignore_range`` answers 200 with the whole file to a Range request. ETag and
Last-Modified are served and If-None-Match is honoured (304).
"""

import hashlib
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from countysync_assets.appraisal.demo_files import write_demo_release


@dataclass
class Served:
    body: bytes
    fail_first: int = 0
    drop_after: int | None = None
    ignore_range: bool = False
    status: int = 200

    @property
    def etag(self) -> str:
        return '"' + hashlib.sha256(self.body).hexdigest()[:16] + '"'


@dataclass
class ReleaseServer:
    files: dict[str, Served] = field(default_factory=dict)
    requests: list[tuple[str, str, dict]] = field(default_factory=list)

    def start(self) -> "ReleaseServer":
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _answer(self, head: bool) -> None:
                owner.requests.append((self.command, self.path, dict(self.headers)))
                served = owner.files.get(self.path)
                if served is None or served.status != 200:
                    self.send_response(served.status if served else 404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if served.fail_first:
                    served.fail_first -= 1
                    self.send_response(503)
                    self.send_header("Retry-After", "0")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.headers.get("If-None-Match") == served.etag:
                    self.send_response(304)
                    self.send_header("ETag", served.etag)
                    self.end_headers()
                    return
                body, start = served.body, 0
                ranged = self.headers.get("Range")
                if ranged and not served.ignore_range:
                    start = int(ranged.removeprefix("bytes=").split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.send_header("ETag", served.etag)
                self.send_header("Last-Modified", "Mon, 01 Jun 2026 00:00:00 GMT")
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if head:
                    return
                payload = body[start:]
                if served.drop_after is not None:
                    self.wfile.write(payload[:served.drop_after])
                    self.wfile.flush()
                    served.drop_after = None
                    self.close_connection = True
                    return
                self.wfile.write(payload)

            def do_GET(self) -> None:
                self._answer(head=False)

            def do_HEAD(self) -> None:
                self._answer(head=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def gets(self, path: str) -> list[dict]:
        return [h for method, p, h in self.requests if method == "GET" and p == path]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve_demo_release(server: ReleaseServer, root: Path, year: int, accounts: int,
                       revision: int = 0) -> tuple[Path, dict[str, bytes]]:
    """Demo HCAD release ZIPs of ``year`` served at HCAD's paths; a district file reading them
    over HTTP, and each ZIP's bytes by name."""
    files = write_demo_release(root / "demo", accounts, year, revision=revision)
    cama = root / "demo" / "data" / "CAMA" / str(year)
    served = {path.name: path.read_bytes() for path in sorted(cama.glob("*.zip"))}
    for name, body in served.items():
        server.files[f"/data/CAMA/{year}/{name}"] = Served(body)
    district_file = root / "hcad_http.yaml"
    district_file.write_text(files["hcad"].read_text().replace(
        (root / "demo").resolve().as_uri(), server.url("")))
    return district_file, served
