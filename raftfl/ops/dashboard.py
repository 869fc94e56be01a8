"""The dashboard's files: `GET /` is static/index.html, `GET /static/<name>` the rest.

No build step: plain HTML, CSS and one script, with uPlot (MIT, from npm's `uplot` 1.6,
dist/uPlot.iife.min.js and its CSS and LICENSE) vendored under static/vendor/. Only the files
shipped in static/ are served, looked up by name in a table read once, so no request path
ever reaches the file system. The page reads the API (/node, /cluster, /failovers) and
follows /events; every script and style comes from this origin (see `HEADERS`).
"""

from __future__ import annotations

import functools
from importlib import resources
from importlib.resources.abc import Traversable

TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".LICENSE": "text/plain"}
HEADERS = (("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; "
            "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
           ("Cache-Control", "no-cache"))


@functools.cache
def _files() -> dict[str, tuple[bytes, str]]:
    """URL path -> (content, type) of every file under static/."""
    out: dict[str, tuple[bytes, str]] = {}

    def walk(node: Traversable, prefix: str) -> None:
        for child in node.iterdir():
            if child.is_dir():
                walk(child, f"{prefix}{child.name}/")
                continue
            kind = next((t for ext, t in TYPES.items() if child.name.endswith(ext)), None)
            if kind is not None:
                out[f"/static/{prefix}{child.name}"] = (child.read_bytes(), kind)

    walk(resources.files(__package__) / "static", "")
    out["/"] = out["/static/index.html"]
    return out


def lookup(path: str) -> tuple[bytes, str] | None:
    """(content, content type) of the dashboard file at `path`, or None."""
    return _files().get(path)
