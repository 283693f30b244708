"""Limits on what one request may send, checked before Gradio reads it.

``BodyLimit`` (ASGI middleware) bounds every request body: an upload (``/upload``, multipart)
to the upload limit plus room for its form headers, and carrying one file; any other body (JSON:
an API call, an MCP tool call, an event with an image inline as a ``data:`` URL) to what one
image of the upload limit takes in base64. A body that says its length (``Content-Length``) and
is over is answered HTTP 413 before a byte of it is read; one sent in chunks is counted as it
arrives and cut off (413) at the limit, before Gradio has written it anywhere.
"""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

FORM_SLACK = 64 * 1024  # multipart headers and boundaries, the JSON around an inline image
BODY_METHODS = ("POST", "PUT", "PATCH")


def json_limit(max_bytes: int) -> int:
    """Largest non-upload body: one image of ``max_bytes`` inline in base64 (4 characters for
    every 3 bytes), with the JSON around it."""
    return max_bytes * 4 // 3 + FORM_SLACK


def is_upload(path: str) -> bool:
    return path.rstrip("/").endswith("/upload")


class BodyCount:
    """Bytes and multipart parts (files) of one body seen so far."""

    def __init__(self, limit: int, boundary: bytes | None, max_parts: int):
        self.limit, self.max_parts = limit, max_parts
        # a part starts at a delimiter followed by a line break; the closing one ends in "--"
        self.delimiter = b"--" + boundary + b"\r\n" if boundary else None
        self.bytes = 0
        self.parts = 0
        self._tail = b""  # the end of the last chunk, for a delimiter split between chunks

    def add(self, chunk: bytes) -> tuple[int, str] | None:
        """Count ``chunk``; (HTTP status, why) once the body is over a limit."""
        self.bytes += len(chunk)
        if self.bytes > self.limit:
            return 413, too_large(self.limit)
        if self.delimiter is not None:
            text = self._tail + chunk
            self.parts += text.count(self.delimiter)
            self._tail = text[-(len(self.delimiter) - 1):]
            if self.parts > self.max_parts:
                return 400, "send one file per upload request"
        return None


def too_large(limit: int) -> str:
    return f"the request is larger than this server's limit of {limit / 2**20:.1f} MB"


def multipart_boundary(scope: Scope) -> bytes | None:
    """The boundary of a multipart body, from its Content-Type header; None for another body."""
    content_type = dict(scope["headers"]).get(b"content-type", b"")
    if not content_type.lower().startswith(b"multipart/"):
        return None
    for param in content_type.split(b";")[1:]:
        key, _, value = param.strip().partition(b"=")
        if key.lower() == b"boundary":
            return value.strip(b'"')
    return None


class BodyLimit:
    """ASGI middleware: request bodies within ``max_bytes`` (the upload limit), see the module."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.upload_limit, self.other_limit = max_bytes + FORM_SLACK, json_limit(max_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        upload = is_upload(scope["path"])
        limit = self.upload_limit if upload else self.other_limit
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > limit:
            await refuse(scope, receive, send, 413, too_large(limit))
            return
        count = BodyCount(limit, multipart_boundary(scope) if upload else None, max_parts=1)
        refused: list[tuple[int, str]] = []
        started = False

        async def counted() -> Message:
            message = await receive()
            if message["type"] == "http.request" and not refused:
                problem = count.add(message.get("body", b""))
                if problem:  # the app stops reading; its answer is replaced by ours
                    refused.append(problem)
                    return {"type": "http.disconnect"}
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if refused:
                return
            started = True
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not refused:
                raise
        if refused and not started:
            await refuse(scope, receive, send, *refused[0])


async def refuse(scope: Scope, receive: Receive, send: Send, status: int, detail: str) -> None:
    await JSONResponse({"detail": detail}, status_code=status)(scope, receive, send)
