"""Limits on what one request, and one client, may ask of the server, checked before Gradio.
docs/running-in-public.md lists them all.

``BodyLimit`` (ASGI middleware) bounds every request body: an upload (``/upload``, multipart)
to the upload limit plus room for its form headers, and carrying one file; any other body (JSON:
an API call, an MCP tool call, an event with an image inline as a ``data:`` URL) to what one
image of the upload limit takes in base64. A body that says its length (``Content-Length``) and
is over is answered HTTP 413 before a byte of it is read; one sent in chunks is counted as it
arrives and cut off (413) at the limit, an upload's end spoiled so that Gradio deletes what it
had written of it.

``QueueGuard`` (ASGI middleware) looks at each request to join Gradio's queue (``/queue/join``,
``/call/<api name>``): a page's session id must be a short token (Gradio answers an empty one
with a server error), and one client may have at most ``max_requests`` requests waiting or
running at once (HTTP 429 beyond; its uploads too, so that it cannot fill the cache
meanwhile). A client is the address its connection comes from; behind a proxy
(``behind_proxy``: on a Space), the last address in ``X-Forwarded-For``, the one the proxy
itself saw. A visitor can add addresses to the header, but only in front of that one:
a spoofed header neither poses as another client nor escapes its own count.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from urllib.parse import unquote

import gradio as gr
from gradio.context import get_blocks_context
from gradio.events import Dependency
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


def spoiled(boundary: bytes) -> bytes:
    """The end of a multipart body that Gradio's parser refuses (a part header with no name):
    it then deletes the files it was writing, which a lost connection would leave behind."""
    return b"\r\n--" + boundary + b"\r\n:\r\n"


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
        boundary = multipart_boundary(scope) if upload else None
        count = BodyCount(limit, boundary, max_parts=1)
        refused: list[tuple[int, str]] = []
        started = False

        async def counted() -> Message:
            message = await receive()
            if message["type"] == "http.request" and not refused:
                problem = count.add(message.get("body", b""))
                if problem:  # the app stops reading; its answer is replaced by ours
                    refused.append(problem)
                    return ({"type": "http.request", "body": spoiled(boundary), "more_body": False}
                            if boundary else {"type": "http.disconnect"})
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


PROXY_ENV = "VIT_DEMO_BEHIND_PROXY"  # 1: trust the last X-Forwarded-For entry (set on a Space)
SESSION_HASH = re.compile(r"[A-Za-z0-9_-]{1,64}")
BAD_SESSION = "session_hash must be 1 to 64 letters, digits, '-' or '_'"


def client_address(peer: str | None, forwarded_for: str | None, behind_proxy: bool) -> str:
    """Who a request counts as: the connection's peer address, or behind a proxy the last
    entry of its ``X-Forwarded-For`` (appended by the proxy; earlier entries are the client's
    own words)."""
    if behind_proxy and forwarded_for and forwarded_for.split(",")[-1].strip():
        return forwarded_for.split(",")[-1].strip()
    return peer or "unknown"


def joins_queue(path: str) -> bool:
    return path.rstrip("/").endswith("/queue/join") or "/call/" in path


def queued_events(demo: gr.Blocks) -> Iterator:
    """Every event of ``demo``'s queue, waiting or running (read on the event loop)."""
    queue = demo._queue
    for event_queue in list(queue.event_queue_per_concurrency_id.values()):
        yield from list(event_queue.queue)
    for job in list(queue.active_jobs):
        yield from job or ()


def in_flight(events: Iterable, address: str, behind_proxy: bool) -> int:
    """How many of ``events`` (Gradio's queued events) came from client ``address``."""
    return sum(1 for event in events if event.request is not None and client_address(
        event.request.client.host if event.request.client else None,
        event.request.headers.get("x-forwarded-for"), behind_proxy) == address)


class QueueGuard:
    """ASGI middleware over ``demo``'s app: session ids and requests in flight per client, see
    the module."""

    def __init__(self, app: ASGIApp, demo: gr.Blocks, max_requests: int, behind_proxy: bool):
        self.app, self.demo, self.max_requests, self.behind_proxy = (app, demo, max_requests,
                                                                     behind_proxy)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not (
                joins_queue(scope["path"]) or is_upload(scope["path"])):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        forwarded = headers.get(b"x-forwarded-for", b"").decode("latin-1") or None
        address = client_address(scope["client"][0] if scope.get("client") else None,
                                 forwarded, self.behind_proxy)
        if is_upload(scope["path"]):  # a client at its share may not fill the cache meanwhile
            if self._at_share(address):
                await refuse(scope, receive, send, 429, self._busy())
                return
            await self.app(scope, receive, send)
            return
        body, more = b"", True
        while more:  # within BodyLimit's bound, which runs first
            message = await receive()
            if message["type"] != "http.request":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if scope["path"].rstrip("/").endswith("/queue/join") and not valid_session(body):
            await refuse(scope, receive, send, 400, BAD_SESSION)
            return
        if self._at_share(address):
            await refuse(scope, receive, send, 429, self._busy())
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


    def _at_share(self, address: str) -> bool:
        return in_flight(queued_events(self.demo), address, self.behind_proxy) >= self.max_requests

    def _busy(self) -> str:
        return (f"this client already has {self.max_requests} requests waiting or running; "
                "wait for one to finish")


def valid_session(body: bytes) -> bool:
    """Whether a queue request's JSON has a usable ``session_hash`` (a body that is no JSON
    object is left for Gradio to refuse)."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return True
    if not isinstance(parsed, dict):
        return True
    session = parsed.get("session_hash")
    return session is None or (isinstance(session, str) and bool(SESSION_HASH.fullmatch(session)))


def checked_examples(dataset: gr.Dataset, loaded: Dependency) -> None:
    """Gradio's examples answer an index beyond them with an IndexError (HTTP 500 and a
    traceback in the log): ``dataset`` refuses it with a ``gr.Error`` naming the range, and
    the event that loads an example (``loaded``, which Gradio runs outside the queue, where any
    error is an HTTP 500) goes through the queue, where an error is a message."""
    get_blocks_context().fns[loaded["id"]].queue = True
    preprocess = dataset.preprocess
    count = len(dataset.raw_samples)

    def checked(payload):
        if payload is not None and (type(payload) is not int or not 0 <= payload < count):
            raise gr.Error(f"There is no example {payload!r}: choose 0 to {count - 1}.")
        return preprocess(payload)

    dataset.preprocess = checked


class HidePartial:
    """ASGI middleware: no hidden or half-written file (a name starting with "." or ending in
    ".tmp", as ``checkpoint._atomic_write`` names its temporary files) is served, from
    whatever folder Gradio serves files."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
            name = unquote(scope["path"]).rstrip("/").rsplit("/", 1)[-1]
            if name.startswith(".") or name.endswith(".tmp"):
                await refuse(scope, receive, send, 404, "Not Found")
                return
        await self.app(scope, receive, send)
