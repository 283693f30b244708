"""What one request may send, through a launched app over raw HTTP and gradio_client: bodies
over the limit answered 413 before they are read (or, sent in chunks, cut off at the limit),
one file per upload, image URLs refused without a download, and every body counted by the
cache budget (chunked uploads, images inline in JSON)."""

from __future__ import annotations

import base64
import io
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

import httpx
import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from vit_demo.settings import Settings
from vit_demo.ui import cache_budget
from vit_demo.ui.cache_budget import FULL
from vit_demo.ui.common import URL_REFUSED
from vit_demo.ui.limits import FORM_SLACK, BodyCount, json_limit

pytestmark = pytest.mark.usefixtures("one_thread")


def raw_request(url: str, head: str, body: bytes = b"", timeout: float = 10) -> tuple[int, bytes]:
    """Send ``head`` (request line and headers, without the blank line) and ``body`` over a
    plain socket; (status, what came back). The server may answer before the body is sent."""
    parsed = urlparse(url)
    with socket.create_connection((parsed.hostname, parsed.port), timeout=timeout) as sock:
        sock.sendall(head.encode() + b"\r\n\r\n" + body)
        data = b""
        while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1]), data


def length(response: bytes) -> int:
    """The Content-Length of a response's head (0 when it has none)."""
    for line in response.partition(b"\r\n\r\n")[0].lower().split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def test_body_count_finds_a_second_file_across_chunks_and_the_byte_limit():
    count = BodyCount(10_000, b"XyZ", max_parts=1)
    assert count.add(b"--XyZ\r\ncontent-disposition: form-data; filename=a\r\n\r\naaa\r\n--X") is None
    assert count.add(b"yZ\r\ncontent-disposition: form-data; filename=b\r\n\r\nbbb\r\n") == (
        400, "send one file per upload request")
    one = BodyCount(10_000, b"XyZ", max_parts=1)
    assert one.add(b"--XyZ\r\n\r\n" + b"a" * 100 + b"\r\n--X") is None
    assert one.add(b"yZ--\r\n") is None  # the closing delimiter is no second file
    assert BodyCount(10, None, 1).add(b"x" * 11)[0] == 413


def test_bodies_over_the_limit_are_refused_before_they_are_read(app):
    url, ctx = app
    max_bytes = ctx.settings.max_bytes
    host = urlparse(url).netloc
    for path, limit in (("/gradio_api/upload", max_bytes + FORM_SLACK),
                        ("/gradio_api/queue/join", json_limit(max_bytes)),
                        ("/gradio_api/run/classify", json_limit(max_bytes))):
        start = time.perf_counter()
        status, answer = raw_request(url, f"POST {path} HTTP/1.1\r\nHost: {host}\r\n"
                                          f"Content-Type: application/json\r\n"
                                          f"Content-Length: {limit + 1}")  # no byte of it sent
        assert status == 413, answer
        assert b"larger than this server's limit" in answer
        assert time.perf_counter() - start < 5
    status, _ = raw_request(url, f"POST /gradio_api/queue/join HTTP/1.1\r\nHost: {host}\r\n"
                                 f"Content-Type: application/json\r\nContent-Length: 2", b"{}")
    assert status != 413  # a body within the limit reaches Gradio


def test_a_chunked_upload_is_cut_off_at_the_limit(small_app):
    url, ctx, cache = small_app
    limit = ctx.settings.max_bytes + FORM_SLACK
    boundary = "b0undary"

    def body():  # no Content-Length: httpx sends it chunked
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; "
               f"filename=\"big.bin\"\r\n\r\n").encode()
        for _ in range(limit // 65536 + 2):
            yield b"x" * 65536

    before = set(cache.rglob("*"))
    with httpx.Client(timeout=60) as http:
        answer = http.post(f"{url}gradio_api/upload", content=body(),
                           headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    # refused by the body limit, or by Gradio's own file-size check when its parser passes the
    # file limit first (the body limit adds the form's slack): 413 either way
    assert answer.status_code == 413, answer.text
    assert set(cache.rglob("*")) == before  # nothing of it left in the cache


def test_one_file_per_upload_request(small_app):
    url, _, cache = small_app
    with httpx.Client(timeout=60) as http:
        files = [("files", (f"f{i}.png", b"x" * 1000)) for i in range(2)]
        before = set(cache.rglob("*"))
        answer = http.post(f"{url}gradio_api/upload", files=files)
        assert answer.status_code == 400 and answer.json() == {
            "detail": "send one file per upload request"}
        assert set(cache.rglob("*")) == before
        one = http.post(f"{url}gradio_api/upload", files=[files[0]])
        assert one.status_code == 200 and len(one.json()) == 1


class Recorder(BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        Recorder.hits.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buffer, format="PNG")
        self.end_headers()
        self.wfile.write(buffer.getvalue())

    def log_message(self, *args):
        pass


def test_image_urls_are_refused_without_a_download(client):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        image_url = f"http://127.0.0.1:{server.server_address[1]}/cat.png"
        for api_name, args in (("/classify", (handle_file(image_url), "scratch")),
                               ("/inside", ("scratch", handle_file(image_url)))):
            with pytest.raises(AppError, match="Cannot fetch an image from a web address"):
                client.predict(*args, api_name=api_name)
        assert Recorder.hits == []
    finally:
        server.shutdown()
    assert "data: URL" in URL_REFUSED


@pytest.fixture()
def small_app(tiny_weights, data_dir, tmp_path, monkeypatch):
    """The app with a 1 MiB cache budget, a 1 MiB upload limit and its own Gradio cache
    folder, whose budget walks the folder only once (so that what is counted between walks
    shows). Yields (url, context, cache folder)."""
    from vit_demo.ui import build_demo, create_context, serve_locally

    cache = tmp_path / "gradio-cache"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(cache))
    monkeypatch.setattr(cache_budget, "CHECK_EVERY_S", 3600.0)
    ctx = create_context(tiny_weights, data_dir, allow_hub=False,
                         settings=Settings(cache_mb=1, max_file_mb=1))
    demo = build_demo(ctx)
    yield serve_locally(demo, ctx), ctx, cache
    demo.close()


def test_chunked_uploads_and_inline_images_count_against_the_cache(small_app):
    url, _, _ = small_app
    boundary = "b0undary"

    def chunked(i: int):
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; "
               f"filename=\"c{i}.bin\"\r\n\r\n").encode()
        for _ in range(9):
            yield os.urandom(65536)
        yield f"\r\n--{boundary}--\r\n".encode()

    with httpx.Client(timeout=60) as http:
        def upload(i: int) -> httpx.Response:
            return http.post(f"{url}gradio_api/upload", content=chunked(i),
                             headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})

        assert upload(1).status_code == 200 and upload(2).status_code == 200  # 1.2 MB in
        assert upload(3).status_code == 507 and upload(3).json() == {"detail": FULL}
        inline = "data:image/png;base64," + base64.b64encode(os.urandom(200_000)).decode()
        refused = http.post(f"{url}gradio_api/run/classify",
                            json={"data": [{"url": inline, "meta": {"_type": "gradio.FileData"}},
                                           "scratch"]})
        assert refused.status_code == 507
        small = http.post(f"{url}gradio_api/run/classify", json={"data": [None, "scratch"]})
        assert small.status_code != 507  # a call without a file still gets through
