"""The web UI's static files: ``/`` (index.html) and ``/ui/<file>``, from broker/http/ui/.

The files ship in the wheel (pyproject.toml package data) and are read once when the
HTTP application is built: a request can only name one of them, so no path reaches the
file system.  They are served with UI_SECURITY_HEADERS, whose Content-Security-Policy
allows scripts, styles and fetches from the broker's own origin only (no inline code; the
UI is vanilla ES modules, uPlot vendored under ui/vendor/), and with an ETag and
``Cache-Control: no-cache``: the browser revalidates (304) so an upgraded broker's files
are used at once.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from importlib import resources
from typing import Final

from aiohttp import web

log = logging.getLogger(__name__)

UI_PREFIX: Final = "/ui/"
INDEX: Final = "index.html"
UI_CSP: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
UI_SECURITY_HEADERS: Final = {
    "Content-Security-Policy": UI_CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-cache",
}
CONTENT_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".txt": "text/plain; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
}
READ_METHODS: Final = ("GET", "HEAD")


@dataclass(frozen=True, slots=True)
class UiFile:
    body: bytes
    content_type: str
    etag: str


class UiFiles:
    """The UI's files by path (``/`` and ``/ui/...``)."""

    def __init__(self, files: dict[str, UiFile]) -> None:
        self.files = files

    @classmethod
    def load(cls) -> UiFiles:
        files: dict[str, UiFile] = {}
        root = resources.files(__package__).joinpath("ui")
        stack = [("", root)]
        while stack:
            prefix, folder = stack.pop()
            if not folder.is_dir():
                continue
            for entry in folder.iterdir():
                name = prefix + entry.name
                if entry.is_dir():
                    stack.append((name + "/", entry))
                    continue
                suffix = "." + entry.name.rpartition(".")[2]
                content_type = CONTENT_TYPES.get(suffix)
                if content_type is None:
                    continue
                body = entry.read_bytes()
                etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
                files[UI_PREFIX + name] = UiFile(body, content_type, etag)
        index = files.get(UI_PREFIX + INDEX)
        if index is not None:
            files["/"] = index
        else:
            log.warning("the web UI's files are missing from the package; / answers 404")
        return cls(files)

    def serves(self, path: str) -> bool:
        return path == "/" or path.startswith(UI_PREFIX)

    def reply(self, method: str, path: str, if_none_match: str | None) -> web.Response:
        found = self.files.get(path)
        if found is None:
            return _plain(404, "not found", path)
        if method not in READ_METHODS:
            response = _plain(405, f"method {method} not allowed", path)
            response.headers["Allow"] = ", ".join(READ_METHODS)
            return response
        headers = {**UI_SECURITY_HEADERS, "ETag": found.etag}
        if if_none_match is not None and found.etag in if_none_match:
            return web.Response(status=304, headers=headers)
        # aiohttp sends no body for HEAD, with the GET's Content-Length.
        response = web.Response(status=200, body=found.body, headers=headers)
        response.headers["Content-Type"] = found.content_type
        return response


def _plain(status: int, text: str, path: str) -> web.Response:
    response = web.json_response({"error": text, "path": path}, status=status)
    response.headers.update(UI_SECURITY_HEADERS)
    response.headers["Cache-Control"] = "no-store"
    return response
