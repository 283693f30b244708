"""Shared fixtures. Tests run offline on the CPU: the hub is switched off before anything
imports huggingface_hub, and CIFAR-10 comes from VIT_DEMO_DATA_DIR (CI points it at
../shared/data/cifar10) or, on a fresh machine without it, from torchvision's download."""

from __future__ import annotations

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data" / "cifar10"


@pytest.fixture(scope="session")
def data_dir() -> str | None:
    """The CIFAR-10 folder: $VIT_DEMO_DATA_DIR, else ../shared/data/cifar10, else None
    (torchvision's download into the user cache)."""
    value = os.environ.get("VIT_DEMO_DATA_DIR")
    if value:
        return value
    return str(SHARED_DATA) if SHARED_DATA.is_dir() else None


@pytest.fixture(scope="session")
def cifar_test(data_dir):
    from vit_demo.data import load_cifar10

    return load_cifar10("test", data_dir)


@pytest.fixture(scope="session")
def cifar_train(data_dir):
    from vit_demo.data import load_cifar10

    return load_cifar10("train", data_dir)


def save_tiny_scratch(weights_dir: Path, name: str, seed: int = 0):
    """A tiny random-weight scratch ViT saved as checkpoint ``name``; returns the model."""
    from vit_demo.checkpoint import save_model
    from vit_demo.data import CIFAR10_DATA_CONFIG, CLASSES
    from vit_demo.model import PRESETS, ViT

    torch.manual_seed(seed)
    model = ViT(PRESETS["cifar10-64x2/4"])
    for p in model.parameters():  # the default init zeroes the head; make the logits informative
        torch.nn.init.normal_(p, std=0.1)
    card = {"arch": "scratch-vit", "preset": "cifar10-64x2/4", "model_config": model.cfg.to_dict(),
            "data_config": CIFAR10_DATA_CONFIG.to_dict(), "classes": list(CLASSES)}
    save_model(weights_dir, name, model.state_dict(), card)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    from vit_demo.models import SCRATCH_CHECKPOINT

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
    yield serve_locally(demo), ctx
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

    from vit_demo.checkpoint import save_model
    from vit_demo.data import CLASSES
    from vit_demo.models import SCRATCH_CHECKPOINT, VITB16, VITB16_CHECKPOINT
    from vit_demo.ui import build_demo, create_context, serve_locally

    folder = tmp_path_factory.mktemp("weights-vitb16")
    save_tiny_scratch(folder, SCRATCH_CHECKPOINT)
    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=len(CLASSES))
    card = {"arch": "timm", "timm_name": "vit_base_patch16_224", "classes": list(CLASSES),
            "data_config": dict(timm.data.resolve_model_data_config(model))}
    save_model(folder, VITB16_CHECKPOINT, model.state_dict(), card)
    del model
    ctx = create_context(folder, data_dir, allow_hub=False)
    ctx.registry.get(VITB16)  # waits for the background load
    demo = build_demo(ctx)
    yield serve_locally(demo), ctx
    demo.close()
