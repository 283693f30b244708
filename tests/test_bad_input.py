"""Whatever people drop into the page: every odd but valid image gets the right answer, every
unusable file a clear message, both through ``open_image`` and through ``/classify`` of the
launched app, which still answers normally afterwards.

Each valid case builds a file from a CIFAR-10 test image together with the RGB pixels it must
decode to, computed independently of ``vit_demo.inference`` (numpy rotation, 16-bit scaling,
channel replication, Pillow's own CMYK conversion); through the API the answer must equal the
model's prediction on those reference pixels.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from vit_demo.inference import MAX_FILE_BYTES, BadImage, open_image, predict, to_rgb

EXIF_ORIENTATION = 0x0112

# (folder, CIFAR-10 image uint8 (32, 32, 3)) -> (file to upload, RGB pixels it stands for)
GoodCase = Callable[[Path, np.ndarray], tuple[Path, np.ndarray]]
# folder -> file that must be refused
BadCase = Callable[[Path], Path]


def png_bytes(width: int, height: int, bit_depth: int, colour_type: int, idat: bytes) -> bytes:
    """A PNG written chunk by chunk, for what Pillow cannot write (16-bit RGB, huge headers)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))


def blank_bilevel_png(path: Path, width: int, height: int) -> Path:
    """A valid all-black 1-bit PNG of any size, compressed row by row: a 20000x20000 one is
    about 50 kB on disk and never exists uncompressed in memory."""
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte, then the packed bits
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    path.write_bytes(png_bytes(width, height, 1, 0, idat))
    return path


# -- valid images and the pixels they must decode to --------------------------------------
def greyscale(folder: Path, x: np.ndarray) -> tuple[Path, np.ndarray]:
    grey = np.asarray(Image.fromarray(x).convert("L"))
    path = folder / "grey.png"
    Image.fromarray(grey).save(path)
    return path, np.repeat(grey[..., None], 3, axis=2)


def rgba_opaque(folder: Path, x: np.ndarray) -> tuple[Path, np.ndarray]:
    path = folder / "rgba.png"
    Image.fromarray(np.dstack([x, np.full(x.shape[:2], 255, np.uint8)]), "RGBA").save(path)
    return path, x


def rgba_half_transparent(folder: Path, x: np.ndarray) -> tuple[Path, np.ndarray]:
    """Left half opaque, right half fully transparent: shown (and classified) on white."""
    alpha = np.zeros(x.shape[:2], np.uint8)
    alpha[:, :16] = 255
    path = folder / "rgba-half.png"
    Image.fromarray(np.dstack([x, alpha]), "RGBA").save(path)
    expected = x.copy()
    expected[:, 16:] = 255
    return path, expected


def png16_rgb(folder: Path, x: np.ndarray) -> tuple[Path, np.ndarray]:
    """16 bits per channel (v * 257 spans 0..65535): the same picture as the 8-bit original."""
    x16 = x.astype(">u2") * 257
    rows = b"".join(b"\x00" + x16[r].tobytes() for r in range(x16.shape[0]))
    path = folder / "rgb16.png"
    path.write_bytes(png_bytes(x.shape[1], x.shape[0], 16, 2, zlib.compress(rows)))
    return path, x


def png16_grey(folder: Path, x: np.ndarray) -> tuple[Path, np.ndarray]:
    grey = np.asarray(Image.fromarray(x).convert("L"))
    path = folder / "grey16.png"
    Image.fromarray(grey.astype(np.uint16) * 257).save(path)
    assert Image.open(path).mode == "I;16"
    return path, np.repeat(grey[..., None], 3, axis=2)


def cmyk_jpeg(folder: Path, x: np.ndarray) -> tuple[Path, np.ndarray]:
    path = folder / "cmyk.jpg"
    Image.fromarray(x).convert("CMYK").save(path, quality=95)
    with Image.open(path) as img:
        assert img.mode == "CMYK"
        reference = np.asarray(img.convert("RGB"))  # Pillow's own CMYK -> RGB
    assert np.abs(reference.astype(int) - x).mean() < 12  # and it is still the same picture
    return path, reference


def animated_gif(folder: Path, x: np.ndarray) -> tuple[Path, np.ndarray]:
    """Three different frames; the first (64 colours, so GIF keeps it exactly) is the one."""
    frames = [Image.fromarray(f).quantize(64) for f in (x, 255 - x, np.roll(x, 16, axis=1))]
    path = folder / "animated.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    with Image.open(path) as img:
        assert img.n_frames == 3
    return path, np.asarray(frames[0].convert("RGB"))


def exif_rotated_jpeg(folder: Path, x: np.ndarray) -> tuple[Path, np.ndarray]:
    """Stored turned a quarter left (32 wide, 24 high) with EXIF orientation 6, "turn it a
    quarter right to view": the viewer's pixels are the decoded ones rotated clockwise."""
    stored = np.ascontiguousarray(np.rot90(x[:, :24], 1))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    path = folder / "rotated.jpg"
    Image.fromarray(stored).save(path, quality=95, exif=exif)
    with Image.open(path) as img:
        decoded = np.asarray(img.convert("RGB"))
    upright = np.ascontiguousarray(np.rot90(decoded, -1))
    assert upright.shape == (32, 24, 3)
    return path, upright


def one_pixel(folder: Path, x: np.ndarray) -> tuple[Path, np.ndarray]:
    path = folder / "1x1.png"
    Image.fromarray(x[:1, :1]).save(path)
    return path, x[:1, :1]


def very_wide(folder: Path, x: np.ndarray) -> tuple[Path, np.ndarray]:
    """4000 x 50: the CIFAR image stretched (nearest neighbour), saved losslessly."""
    wide = np.asarray(Image.fromarray(x).resize((4000, 50), Image.NEAREST))
    path = folder / "4000x50.png"
    Image.fromarray(wide).save(path)
    return path, wide


GOOD: dict[str, GoodCase] = {
    "greyscale": greyscale, "rgba-opaque": rgba_opaque,
    "rgba-transparent": rgba_half_transparent, "png16-rgb": png16_rgb,
    "png16-grey": png16_grey, "cmyk-jpeg": cmyk_jpeg, "animated-gif": animated_gif,
    "exif-rotated-jpeg": exif_rotated_jpeg, "1x1": one_pixel, "4000x50": very_wide,
}


# -- unusable files and the words their message must contain -------------------------------
def empty(folder: Path) -> Path:
    path = folder / "empty.png"
    path.write_bytes(b"")
    return path


def truncated_jpeg(folder: Path) -> Path:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(
        buf, "JPEG", quality=90)
    path = folder / "truncated.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path


def text_as_png(folder: Path) -> Path:
    path = folder / "notes.png"
    path.write_text("this is a shopping list, not a picture\n")
    return path


def postscript(folder: Path) -> Path:
    """An EPS file, which Pillow would hand to Ghostscript: never even identified."""
    path = folder / "drawing.png"
    path.write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 32 32\nshowpage\n")
    return path


def bomb_20000(folder: Path) -> Path:
    return blank_bilevel_png(folder / "20000x20000.png", 20000, 20000)


def over_pixel_limit(folder: Path) -> Path:
    """48 megapixels: under Pillow's own bomb limit, over the app's 25."""
    return blank_bilevel_png(folder / "8000x6000.png", 8000, 6000)


BAD: dict[str, tuple[BadCase, str]] = {
    "empty": (empty, "the file is empty"),
    "truncated-jpeg": (truncated_jpeg, "the image file is damaged or truncated"),
    "text-named-png": (text_as_png, "the file is not an image format the app can read"),
    "eps-named-png": (postscript, "the file is not an image format the app can read"),
    "20000x20000-png": (bomb_20000, "the image has too many pixels to decode safely; "
                        "the limit is 25 megapixels"),
    "8000x6000-png": (over_pixel_limit, "the image is 8000x6000 pixels; the limit is 25 megapixels"),
}


def api_confidences(label_output: dict) -> dict[str, float]:
    return {c["label"]: c["confidence"] for c in label_output["confidences"]}


def assert_same_prediction(got: dict[str, float], expected: dict[str, float]) -> None:
    assert list(got) == list(expected)  # same classes in the same order, top label first
    np.testing.assert_allclose(list(got.values()), list(expected.values()), atol=1e-5)


def assert_clear_refusal(exc: AppError, words: str) -> None:
    """The gr.Error text reached the client, not a traceback nor Gradio's generic message."""
    message = str(exc)
    assert f"Cannot use this file: {words}" in message
    assert "Traceback" not in message and "upstream Gradio app has raised" not in message


@pytest.fixture()
def cifar_image(cifar_test) -> np.ndarray:
    return cifar_test.x[7].numpy()


@pytest.mark.parametrize("case", GOOD)
def test_open_image_decodes_to_reference_pixels(case, cifar_image, tmp_path):
    path, expected = GOOD[case](tmp_path, cifar_image)
    img = open_image(path)
    assert img.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(img), expected)


@pytest.mark.parametrize("case", GOOD)
def test_classify_api_answers_as_on_reference_pixels(case, client, app, cifar_image, tmp_path):
    _, ctx = app
    path, expected = GOOD[case](tmp_path, cifar_image)
    left, right, notes = client.predict(handle_file(str(path)), "scratch", api_name="/classify")
    reference = predict(ctx.registry.get("scratch"), Image.fromarray(expected), 5).confidences
    assert_same_prediction(api_confidences(left), reference)
    assert not right and " ms" in notes


def test_16bit_png_answers_as_8bit_original(client, cifar_image, tmp_path):
    original = tmp_path / "rgb8.png"
    Image.fromarray(cifar_image).save(original)
    wide, _ = png16_rgb(tmp_path, cifar_image)
    answers = [client.predict(handle_file(str(p)), "scratch", api_name="/classify")[0]
               for p in (original, wide)]
    assert answers[0]["label"] == answers[1]["label"]
    assert_same_prediction(api_confidences(answers[1]), api_confidences(answers[0]))


@pytest.mark.parametrize("array, expected", [
    (np.array([[0, 95 * 257, 65535]], np.uint16), [0, 95, 255]),  # I;16: 16-bit PNG / TIFF
    (np.array([[0.0, 0.5, 1.0]], np.float32), [0, 128, 255]),  # F in [0, 1]: float TIFF
    (np.array([[0, 128, 255]], np.int32), [0, 128, 255]),  # I holding 8-bit values
    (np.array([[0, 32768, 65535]], np.int32), [0, 128, 255]),  # I holding 16-bit values
])
def test_to_rgb_scales_wide_greyscale_modes(array, expected):
    rgb = np.asarray(to_rgb(Image.fromarray(array)))
    np.testing.assert_array_equal(rgb, np.repeat(np.array(expected, np.uint8)[None, :, None], 3, 2))


@pytest.mark.parametrize("case", BAD)
def test_open_image_refuses_with_a_reason(case, tmp_path):
    make, words = BAD[case]
    with pytest.raises(BadImage, match=words):
        open_image(make(tmp_path))


@pytest.mark.parametrize("case", BAD)
def test_classify_api_refuses_with_a_reason(case, client, tmp_path):
    make, words = BAD[case]
    with pytest.raises(AppError) as info:
        client.predict(handle_file(str(make(tmp_path))), "scratch", api_name="/classify")
    assert_clear_refusal(info.value, words)


def over_size_limit(folder: Path) -> Path:
    """A sparse file one byte over the upload limit (nothing is written to disk)."""
    path = folder / "huge.png"
    with open(path, "wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)
    return path


def test_open_image_refuses_files_over_the_size_limit(tmp_path):
    with pytest.raises(BadImage, match="the limit is 20 MB"):
        open_image(over_size_limit(tmp_path))


def test_server_refuses_uploads_over_max_file_size(app, client, tmp_path):
    path = over_size_limit(tmp_path)
    with pytest.raises(ValueError, match="exceeds the maximum file size"):  # client-side check
        client.predict(handle_file(str(path)), "scratch", api_name="/classify")
    with open(path, "rb") as f:  # the server itself, for clients that skip that check
        response = httpx.post(f"{app[0]}gradio_api/upload", files={"files": ("huge.png", f)},
                              timeout=60)
    assert response.status_code == 413
    assert "File size exceeded" in response.text


def test_server_still_answers_normally_afterwards(client, app, cifar_test, tmp_path):
    _, ctx = app
    x = cifar_test.x[11].numpy()
    path = tmp_path / "normal.png"
    Image.fromarray(x).save(path)
    left, _, _ = client.predict(handle_file(str(path)), "scratch", api_name="/classify")
    reference = predict(ctx.registry.get("scratch"), Image.fromarray(x), 5).confidences
    assert_same_prediction(api_confidences(left), reference)
