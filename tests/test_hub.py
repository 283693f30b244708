"""The hub loader, offline, against Hugging Face caches laid out like the real repository
(``hub/models--owner--name/snapshots/<rev>/`` and ``refs/main``) holding random weights: whatever
architecture ``config.json`` names, the model's logits equal those of timm's
``vit_base_patch16_224`` loaded with the same state dict, and its data config is the
checkpoint base's (224 px, mean and std 0.5, crop 0.9, bicubic)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from vit_demo.data import DataConfig
from vit_demo.hub import HubUnavailable, VITB16_HUB_REPO, load_hub_vit

pytestmark = pytest.mark.usefixtures("one_thread")

NAME = f"hf-hub:{VITB16_HUB_REPO}"
REV = "0123456789abcdef0123456789abcdef01234567"
BASE_DATA_CONFIG = DataConfig((3, 224, 224), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic", 0.9)
# The data config fields of a timm-exported config.json for the base tag.
TAG_PRETRAINED_CFG = {"input_size": [3, 224, 224], "interpolation": "bicubic", "crop_pct": 0.9,
                      "crop_mode": "center", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                      "num_classes": 10}


def reference(arch: str, seed: int, folder: Path) -> tuple[Path, torch.Tensor, torch.Tensor]:
    """A random-weight timm ``arch`` with 10 classes, its state dict saved in ``folder`` as
    model.safetensors and pytorch_model.bin (as a cache's blobs); one input and its logits."""
    import timm

    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False, num_classes=10).eval()
    for p in model.parameters():  # the default init zeroes the head; make every logit count
        torch.nn.init.normal_(p, std=0.02)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        logits = model(x)
    state = model.state_dict()
    save_file(state, str(folder / "model.safetensors"))
    torch.save(state, folder / "pytorch_model.bin")
    return folder, x, logits


@pytest.fixture(scope="module")
def vitb16(tmp_path_factory):
    return reference("vit_base_patch16_224", 0, tmp_path_factory.mktemp("vitb16-blobs"))


def hub_cache(root: Path, repo: str, config: dict, files: dict[str, Path]) -> None:
    """Under the cache ``root``: ``repo`` at revision REV (named by refs/main) with ``config``
    as config.json and ``files`` (name: blob) linked into the snapshot as the hub cache does."""
    repo_dir = root / f"models--{repo.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / REV
    snapshot.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(REV)
    (snapshot / "config.json").write_text(json.dumps(config))
    for filename, blob in files.items():
        (snapshot / filename).symlink_to(blob)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty hub cache that huggingface_hub (already imported, offline) reads."""
    from huggingface_hub import constants

    root = tmp_path / "hub"
    root.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    return root


@pytest.mark.parametrize("config, weights_file, data_cfg", [
    # A plain timm name: timm builds and loads it; the input fields config.json leaves out
    # come from timm's tag (timm alone would use ImageNet's mean and std, crop 0.875).
    ({"architecture": "vit_base_patch16_224", "num_classes": 10}, "model.safetensors",
     BASE_DATA_CONFIG),
    # The base's hub name, as timm exports a config: timm refuses the "timm/" prefix.
    ({"architecture": "timm/vit_base_patch16_224.orig_in21k_ft_in1k", "num_classes": 10,
      "pretrained_cfg": TAG_PRETRAINED_CFG}, "pytorch_model.bin", BASE_DATA_CONFIG),
    # A name only another package registers, in the legacy one-dict layout: what it states wins.
    ({"architecture": "vit_base_patch16_224_in21k_ft_cifar10", "num_classes": 10,
      "crop_pct": 1.0}, "pytorch_model.bin", replace(BASE_DATA_CONFIG, crop_pct=1.0)),
], ids=["timm-name", "timm-prefixed-tag", "other-package"])
def test_vitb16_from_the_cache_whatever_config_names(config, weights_file, data_cfg, cache,
                                                     vitb16):
    blobs, x, expected = vitb16
    hub_cache(cache, VITB16_HUB_REPO, config, {weights_file: blobs / weights_file})
    model, got_cfg = load_hub_vit(NAME)
    assert not model.training and model.num_classes == 10
    with torch.inference_mode():
        torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-5)
    assert got_cfg == data_cfg


def test_timm_prefixed_name_of_another_architecture_builds_that_one(cache, tmp_path):
    blobs, x, expected = reference("vit_tiny_patch16_224", 1, tmp_path)
    hub_cache(cache, "someone/tiny-cifar10",
              {"architecture": "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"},
              {"model.safetensors": blobs / "model.safetensors"})
    model, data_cfg = load_hub_vit("someone/tiny-cifar10")
    assert model.embed_dim == 192
    with torch.inference_mode():
        torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-5)
    assert data_cfg == BASE_DATA_CONFIG


def test_weights_that_fit_no_known_architecture_are_refused_clearly(cache, tmp_path):
    save_file({"head.weight": torch.zeros(10, 192), "head.bias": torch.zeros(10)},
              str(tmp_path / "model.safetensors"))
    hub_cache(cache, VITB16_HUB_REPO, {"architecture": "made_up_vit"},
              {"model.safetensors": tmp_path / "model.safetensors"})
    with pytest.raises(HubUnavailable) as info:
        load_hub_vit(NAME)
    assert str(info.value).startswith(f"{VITB16_HUB_REPO}: the weights do not fit timm's "
                                      "vit_base_patch16_224.orig_in21k_ft_in1k: ")
    assert "Missing key(s)" in str(info.value)


def test_pickle_holding_more_than_tensors_is_refused(cache, tmp_path):
    marker = tmp_path / "unpickled"
    torch.save({"head.weight": Unsafe(str(marker))}, tmp_path / "pytorch_model.bin")
    hub_cache(cache, VITB16_HUB_REPO, {"architecture": "not-a-timm-model"},
              {"pytorch_model.bin": tmp_path / "pytorch_model.bin"})
    with pytest.raises(HubUnavailable, match="holds more than tensors, so it is not loaded"):
        load_hub_vit(NAME)
    assert not marker.exists()


class Unsafe:
    """Unpickling this would write a file: what weights_only=True must never do."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


@pytest.mark.parametrize("layout", ["empty", "config-only"])
def test_offline_without_the_files_says_how_to_get_them(layout, cache):
    if layout == "config-only":
        hub_cache(cache, VITB16_HUB_REPO, {"architecture": "vit_base_patch16_224"}, {})
    with pytest.raises(HubUnavailable) as info:
        load_hub_vit(NAME)
    message = str(info.value)
    assert message.startswith(f"{VITB16_HUB_REPO} is not in the Hugging Face cache and "
                              "HF_HUB_OFFLINE=1: run once with network access")
    assert f"hf download {VITB16_HUB_REPO} config.json pytorch_model.bin" in message
    assert str(cache) not in message and "\n" not in message  # no server path reaches a visitor


def test_the_app_serves_vitb16_from_a_cache_timm_cannot_build(cache, vitb16, tiny_weights,
                                                                tmp_path, cifar_test):
    """Through the app: config.json names an architecture only another package registers;
    the registry still ends with ViT-B/16 ready, answering /classify and /rollout with the
    reference model's prediction."""
    from gradio_client import Client, handle_file
    from PIL import Image

    from vit_demo.data import CLASSES
    from vit_demo.inference import preprocess
    from vit_demo.registry import VITB16
    from vit_demo.ui import build_demo, create_context, serve_locally

    blobs, _, _ = vitb16
    hub_cache(cache, VITB16_HUB_REPO, {"architecture": "vit_base_patch16_224_in21k_ft_cifar10",
                                       "num_classes": 10}, {"pytorch_model.bin": blobs / "pytorch_model.bin"})
    ctx = create_context(tiny_weights, allow_hub=True, finetune_dir=tmp_path / "ft")
    loaded = ctx.registry.get(VITB16)
    assert ctx.registry.status(VITB16).state == "ready"
    png = tmp_path / "img.png"
    Image.fromarray(cifar_test.x[0].numpy()).save(png)
    reference_model, _ = load_hub_vit(NAME)
    with torch.inference_mode():
        expected = CLASSES[reference_model(preprocess(Image.open(png).convert("RGB"),
                                                      loaded.data_cfg)).argmax(-1).item()]
    demo = build_demo(ctx)
    client = Client(serve_locally(demo, ctx), verbose=False)
    try:
        _, right, _ = client.predict(handle_file(str(png)), "both", api_name="/classify")
        assert right["label"] == expected
        outputs = client.predict(handle_file(str(png)), "vit-b16", method="rollout",
                                 api_name="/rollout")
        assert outputs[0] is not None and outputs[4][VITB16]["grid_size"] == [14, 14]
    finally:
        client.close()
        demo.close()
