"""The live map's static upstream: Envoy routes every non-gRPC GET here. It serves the built page
(web/dist) and `config.json`, which tells the page where the API is and, outside production,
hands it a fresh development token for an `ops` user."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from services.auth.identity import Role
from services.auth.keys import ensure_dev_keys, mint_token

WEB_DIST = Path(__file__).resolve().parents[2] / "web" / "dist"
DEFAULT_CENTER = (12.9716, 77.5946)
PAGE_USER = "ops-live-map"
log = logging.getLogger(__name__)

NOT_BUILT = b"""<!doctype html><meta charset="utf-8"><title>Ridemesh</title>
<body style="font-family: sans-serif; margin: 3em">
<h1>Ridemesh is running, but the live map is not built</h1>
<p>The page is built from <code>web/</code> with npm: run <code>make web</code> (or
<code>make install</code> on a machine with Node.js), then reload.</p>
<p>The gRPC and gRPC-Web API on this port works without it.</p></body>"""


@dataclass(frozen=True)
class PageConfig:
    """What `config.json` says. `keys_dir` is set only in development: the page then signs in
    with a token minted here; in production it is None and the page asks for a token."""

    keys_dir: Path | None = None
    tile_url: str | None = None
    tile_attribution: str | None = None
    center: tuple[float, float] = DEFAULT_CENTER
    zoom: int = 14
    token_ttl_s: int = 12 * 3600

    def document(self) -> dict[str, Any]:
        token = None
        if self.keys_dir is not None:
            keys = ensure_dev_keys(self.keys_dir)
            token = mint_token(
                keys.private_pem(), keys.kid, sub=PAGE_USER, role=Role.OPS, ttl_s=self.token_ttl_s
            )
        return {
            "apiUrl": None,  # the page's own origin: Envoy serves both
            "token": token,
            "tileUrl": self.tile_url,
            "tileAttribution": self.tile_attribution,
            "center": list(self.center),
            "zoom": self.zoom,
            "production": self.keys_dir is None,
        }


class PageHandler(SimpleHTTPRequestHandler):
    """Static files from `directory`, plus /config.json and /healthz."""

    page: PageConfig = PageConfig()

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/config.json":
            self._send(HTTPStatus.OK, "application/json", json.dumps(self.page.document()).encode())
        elif path == "/healthz":
            self._send(HTTPStatus.OK, "text/plain", b"ok\n")
        elif path in ("/", "/index.html") and not Path(self.directory, "index.html").is_file():
            self._send(HTTPStatus.OK, "text/html; charset=utf-8", NOT_BUILT)
        else:
            super().do_GET()

    def end_headers(self) -> None:
        # The page and its config change with every build and run; never serve a stale one.
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def _send(self, status: HTTPStatus, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


def make_server(host: str, port: int, dist: Path, page: PageConfig) -> ThreadingHTTPServer:
    """A threading HTTP server for the page on host:port (bound when this returns)."""
    handler = type("ConfiguredPageHandler", (PageHandler,), {"page": page})
    server = ThreadingHTTPServer((host, port), partial(handler, directory=str(dist)))
    server.daemon_threads = True
    return server
