"""A size limit for Gradio's cache folder, where every upload and every file a handler returns
is kept until ``delete_cache`` finds it older than its age (an hour here). Unchecked, one
anonymous caller sending 20 MB uploads in a loop fills a Space's disk long before that.

``CacheBudget`` (ASGI middleware) keeps the folder under ``budget_bytes``: on a POST, at most
once a second, it adds the folder up and, while it is over, deletes its oldest files that are
older than ``GRACE_S`` and not kept for good by Gradio (the examples). Between two walks every
POST body's bytes are added as they arrive (so a body sent in chunks counts, and so does an
image sent inline as a ``data:`` URL to any event, public or private). While it is still over
(everything in it is fresh), uploads and any POST body that may carry a file (over
``SMALL_BODY``, or of unknown length) are refused with HTTP 507 until room is made.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import anyio
import gradio as gr
from gradio import processing_utils
from gradio.utils import get_upload_folder
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .limits import is_upload

GRACE_S = 120.0  # a file younger than this may not have been read yet by the request that sent it
CHECK_EVERY_S = 1.0  # between two walks of the folder, uploads are added to the last total
FULL = "the server's upload space is full; try again in a few minutes"
# A POST body this small (an API call, an event's JSON) writes nothing worth refusing; a larger
# one may carry an image inline (a data: URL), which Gradio writes to the folder.
SMALL_BODY = 64 * 1024


def prune(folder: Path, budget_bytes: int, kept: set[str], now: float,
          grace_s: float) -> tuple[int, list[str]]:
    """Delete the oldest files under ``folder`` (by the later of their modification and status
    change: a copy keeps its source's modification time) while the folder holds more than
    ``budget_bytes``, except files in ``kept`` and files younger than ``grace_s`` at ``now``.
    Returns (bytes left, paths deleted); a folder a deletion empties is removed."""
    files = []
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            files.append((max(st.st_mtime, st.st_ctime), st.st_size, path))
    used, deleted = sum(size for _, size, _ in files), []
    for changed, size, path in sorted(files):
        if used <= budget_bytes or changed > now - grace_s:
            break
        if path in kept:
            continue
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
        used -= size
        deleted.append(path)
        if Path(path).parent != folder:
            try:
                os.rmdir(Path(path).parent)
            except OSError:
                pass
    return used, deleted


class CacheBudget:
    """ASGI middleware over Gradio's app for ``demo``; the folder is Gradio's upload folder."""

    def __init__(self, app: ASGIApp, demo: gr.Blocks, budget_bytes: int):
        self.app, self.demo, self.budget = app, demo, budget_bytes
        self.folder = Path(get_upload_folder())  # as Gradio writes it: paths compare equal
        self._lock = threading.Lock()
        self._walked_at = -CHECK_EVERY_S
        self._used = 0  # bytes at the last walk, plus the uploads let in since

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        if time.monotonic() - self._walked_at >= CHECK_EVERY_S:
            await anyio.to_thread.run_sync(self._make_room)
        length = dict(scope["headers"]).get(b"content-length", b"")
        may_write = is_upload(scope["path"]) or not length.isdigit() or int(length) > SMALL_BODY
        if may_write and self._used > self.budget:
            await JSONResponse({"detail": FULL}, status_code=507)(scope, receive, send)
            return

        async def counted() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                self._used += len(message.get("body", b""))
            return message

        await self.app(scope, counted, send)

    def _make_room(self) -> None:
        with self._lock:
            if time.monotonic() - self._walked_at < CHECK_EVERY_S:
                return
            kept = {p for block in self.demo.blocks.values()
                    for p in getattr(block, "keep_in_cache", ())}
            self._used, deleted = prune(self.folder, self.budget, kept, time.time(), GRACE_S)
            for paths in self.demo.temp_file_sets:  # as Gradio's own deletion does
                paths.difference_update(deleted)
            self._walked_at = time.monotonic()


_COPIES: dict[tuple[str, int, int], str] = {}  # (path, mtime, size) -> its copy in the cache
MAX_COPIES = 32


def served_copy(path: Path) -> str:
    """``path``'s copy in Gradio's cache folder, from which Gradio serves it. Handed a file
    from elsewhere, Gradio hashes its whole content on every answer that names it (a ViT-B/16
    checkpoint: about half a second); the copy is made once per version of the file (its
    modification time and size), and again once the cache has let it go."""
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    copy = _COPIES.get(key)
    if copy is None or not os.path.exists(copy):
        copy = processing_utils.save_file_to_cache(path, get_upload_folder())
        _COPIES[key] = copy
        for old in list(_COPIES)[:-MAX_COPIES]:
            del _COPIES[old]
    return copy
