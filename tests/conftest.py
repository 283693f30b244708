"""Shared fixtures. Tests run offline on the CPU, with no data set to fetch.

The hub is switched off before anything imports huggingface_hub. Tests that need images but not
CIFAR-10's content (the trainer, the app, the fine-tune job, ...) get a synthetic data set laid
out exactly like CIFAR-10's arrays (``data_dir``, ``cifar_train``, ``cifar_test``); only tests
about what the shipped model learnt need the real test set (``real_cifar_test``): from
VIT_DEMO_DATA_DIR, ../shared/data/cifar10 or torchvision's download cache, never downloaded.
Without it they are skipped with the reason, except under VIT_DEMO_REQUIRE_DATA=1 (CI), where
its absence is a failure."""

from __future__ import annotations

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data" / "cifar10"
REQUIRE_DATA_ENV = "VIT_DEMO_REQUIRE_DATA"
# The user's real data folder, read before the ``data_dir`` fixture points the variable at the
# synthetic set.
REAL_DATA_DIR = os.environ.get("VIT_DEMO_DATA_DIR")
# Synthetic set sizes: the fine-tune tests take up to 8,000 training images after the fixed
# 5,000-image validation split; the tests read at most the first 300 test images.
SYNTHETIC_TRAIN, SYNTHETIC_TEST = 13_000, 1_000


def synthetic_cifar10(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` deterministic 32x32 RGB uint8 images and int64 labels, every class equally often
    in shuffled order: each class is a striped pattern of its own orientation, frequency and
    colour under uniform noise, so that a tiny model can learn it in a few steps."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:32, 0:32] / 32.0
    patterns = []
    for c in range(10):
        angle = np.pi * c / 10
        wave = np.sin(2 * np.pi * (2 + c % 3) * (cols * np.cos(angle) + rows * np.sin(angle)))
        colour = 0.3 + 0.7 * rng.random(3)
        patterns.append(40 + 135 * (0.5 + 0.5 * wave[..., None] * colour))  # in [40, 175]
    base = np.stack(patterns).round().astype(np.uint8)  # (10, 32, 32, 3)
    y = rng.permutation(np.arange(n) % 10).astype(np.int64)
    x = base[y] - np.uint8(40)  # uint8 arithmetic stays in range: [0, 135] + [0, 80]
    x += rng.integers(0, 81, size=x.shape, dtype=np.uint8)
    return x, y


@pytest.fixture(scope="session", autouse=True)
def work_dir(tmp_path_factory) -> Path:
    """The app's run-time folders (``storage.work_dir``: fine-tunes, resume states) in this
    session's temporary folder, not the machine's shared one."""
    folder = tmp_path_factory.mktemp("work")
    mp = pytest.MonkeyPatch()
    mp.setenv("VIT_DEMO_WORK_DIR", str(folder))
    yield folder
    mp.undo()


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
    """A folder with synthetic ``cifar10_{train,test}.npz`` in CIFAR-10's layout, also set as
    VIT_DEMO_DATA_DIR for the session so that nothing reads real data or downloads it."""
    folder = tmp_path_factory.mktemp("cifar10-synthetic")
    for split, n, seed in (("train", SYNTHETIC_TRAIN, 0), ("test", SYNTHETIC_TEST, 1)):
        x, y = synthetic_cifar10(n, seed)
        np.savez(folder / f"cifar10_{split}.npz", x=x, y=y)
    mp = pytest.MonkeyPatch()
    mp.setenv("VIT_DEMO_DATA_DIR", str(folder))
    yield str(folder)
    mp.undo()


@pytest.fixture(scope="session")
def cifar_test(data_dir):
    from vit_demo.data import load_cifar10

    return load_cifar10("test", data_dir, download=False)


@pytest.fixture(scope="session")
def cifar_train(data_dir):
    from vit_demo.data import load_cifar10

    return load_cifar10("train", data_dir, download=False)


@pytest.fixture(scope="session")
def real_cifar_test():
    """CIFAR-10's real 10,000 test images: from $VIT_DEMO_DATA_DIR, else ../shared/data/cifar10,
    else torchvision's archive in the download cache. Skipped with the reason when none is
    there; a failure under VIT_DEMO_REQUIRE_DATA=1."""
    from vit_demo.data import DataUnavailable, download_root, load_cifar10

    if REAL_DATA_DIR:
        source = Path(REAL_DATA_DIR)
    else:
        source = SHARED_DATA if SHARED_DATA.is_dir() else download_root()
    try:
        test = load_cifar10("test", source, download=False)
    except DataUnavailable as exc:
        reason = (f"needs CIFAR-10's real test set, which tests never download: {exc} "
                  "(`python -m vit_demo evaluate --name vit-scratch-cifar10` downloads it once)")
        if os.environ.get(REQUIRE_DATA_ENV) == "1":
            pytest.fail(f"{REQUIRE_DATA_ENV}=1: {reason}")
        pytest.skip(reason)
    assert len(test) == 10_000, f"{source}: {len(test)} test images, not CIFAR-10's 10,000"
    return test


def save_tiny_scratch(weights_dir: Path, name: str, seed: int = 0):
    """A tiny random-weight scratch ViT saved as checkpoint ``name``; returns the model."""
    from vit_demo.adapters import ModelKind
    from vit_demo.card import ModelCard, save_model
    from vit_demo.data import CIFAR10_DATA_CONFIG, CLASSES
    from vit_demo.model import PRESETS, ViT

    torch.manual_seed(seed)
    model = ViT(PRESETS["cifar10-64x2/4"])
    for p in model.parameters():  # the default init zeroes the head; make the logits informative
        torch.nn.init.normal_(p, std=0.1)
    card = ModelCard(ModelKind.SCRATCH, CLASSES, CIFAR10_DATA_CONFIG, model_config=model.cfg,
                     preset="cifar10-64x2/4")
    save_model(weights_dir, name, model.state_dict(), card)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    from vit_demo.registry import SCRATCH_CHECKPOINT

    folder = tmp_path_factory.mktemp("weights")
    save_tiny_scratch(folder, SCRATCH_CHECKPOINT)
    return folder


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread: tiny models gain little from a second, and on a busy CPU two threads
    crawl. Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def app(tiny_weights, data_dir):
    """The app launched on a free loopback port with the tiny scratch model and the real
    (offline, hence failing) hub path for ViT-B/16. Yields (url, context)."""
    from vit_demo.ui import build_demo, create_context, serve_locally

    ctx = create_context(tiny_weights, data_dir, allow_hub=True)
    demo = build_demo(ctx)
    yield serve_locally(demo, ctx), ctx
    demo.close()


@pytest.fixture(scope="session")
def client(app):
    from gradio_client import Client

    c = Client(app[0], verbose=False)
    yield c
    c.close()


@pytest.fixture(scope="session")
def vitb16_app(tmp_path_factory, data_dir):
    """An app whose ViT-B/16 is a random-weight vit_base_patch16_224 saved as the local
    ``vit-b16-cifar10`` checkpoint, beside the tiny scratch model. Yields (url, context)."""
    import timm

    from vit_demo.adapters import ModelKind
    from vit_demo.card import ModelCard, save_model
    from vit_demo.data import CLASSES, DataConfig
    from vit_demo.registry import SCRATCH_CHECKPOINT, VITB16, VITB16_CHECKPOINT
    from vit_demo.ui import build_demo, create_context, serve_locally

    folder = tmp_path_factory.mktemp("weights-vitb16")
    save_tiny_scratch(folder, SCRATCH_CHECKPOINT)
    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=len(CLASSES))
    card = ModelCard(ModelKind.TIMM, CLASSES,
                     DataConfig.from_dict(timm.data.resolve_model_data_config(model)),
                     timm_name="vit_base_patch16_224")
    save_model(folder, VITB16_CHECKPOINT, model.state_dict(), card)
    del model
    ctx = create_context(folder, data_dir, allow_hub=False)
    ctx.registry.get(VITB16)  # waits for the background load
    demo = build_demo(ctx)
    yield serve_locally(demo, ctx), ctx
    demo.close()
