"""The classify path: preprocessing against timm's, prediction, and /classify through a
launched app with gradio_client on real CIFAR-10 images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gradio_client import handle_file
from PIL import Image

from vit_demo.data import CLASSES, CIFAR10_DATA_CONFIG, DataConfig
from vit_demo.inference import preprocess


@pytest.mark.parametrize("size", [(32, 32), (300, 200), (50, 4000), (1, 1)])
def test_preprocess_equals_timm_eval_transform(size):
    import timm

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10)
    cfg = timm.data.resolve_model_data_config(model)
    transform = timm.data.create_transform(**cfg)
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    ours = preprocess(img, DataConfig.from_dict(cfg))
    assert ours.shape == (1, 3, 224, 224)
    torch.testing.assert_close(ours, transform(img).unsqueeze(0), atol=1e-6, rtol=0)


def test_scratch_preprocess_keeps_cifar_pixels(cifar_test):
    x = cifar_test.x[0]
    ours = preprocess(Image.fromarray(x.numpy()), CIFAR10_DATA_CONFIG)[0]  # (3, 32, 32)
    mean = torch.tensor(CIFAR10_DATA_CONFIG.mean).view(3, 1, 1)
    std = torch.tensor(CIFAR10_DATA_CONFIG.std).view(3, 1, 1)
    expected = (x.permute(2, 0, 1).float() / 255 - mean) / std
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)


def _save_png(tmp_path, x, name="img.png"):
    path = tmp_path / name
    Image.fromarray(x.numpy()).save(path)
    return path


def test_classify_api_scratch_matches_direct_forward(client, app, cifar_test, tmp_path):
    _, ctx = app
    model = ctx.registry.get("scratch").model
    for i in (0, 1, 2):
        path = _save_png(tmp_path, cifar_test.x[i], f"{i}.png")
        left, right, notes = client.predict(handle_file(str(path)), "scratch", api_name="/classify")
        x = (cifar_test.x[i].permute(2, 0, 1).float() / 255)
        x = (x - torch.tensor(CIFAR10_DATA_CONFIG.mean).view(3, 1, 1)) / torch.tensor(
            CIFAR10_DATA_CONFIG.std).view(3, 1, 1)
        with torch.no_grad():
            probs = model(x.unsqueeze(0)).softmax(-1)[0]
        top = probs.topk(5)
        assert left["label"] == CLASSES[int(top.indices[0])]
        got = {c["label"]: c["confidence"] for c in left["confidences"]}
        assert list(got) == [CLASSES[int(j)] for j in top.indices]
        np.testing.assert_allclose(list(got.values()), top.values.numpy(), atol=1e-5)
        assert not right  # one model chosen: the right side stays empty
        assert " ms" in notes


def test_requests_do_not_rebuild_gradios_analytics_table(client, cifar_test, tmp_path,
                                                         monkeypatch):
    """Gradio's queue rebuilds a DataFrame of its last 10,000 events after each event unless
    told otherwise (GRADIO_ANALYTICS_CACHE_FREQUENCY); the app tells it once per 1,000."""
    from gradio.queueing import Queue

    built = []
    original = Queue._get_df
    monkeypatch.setattr(Queue, "_get_df", staticmethod(lambda records: built.append(
        len(records)) or original(records)))
    path = _save_png(tmp_path, cifar_test.x[0], "0.png")
    for _ in range(3):
        left, _, _ = client.predict(handle_file(str(path)), "scratch", api_name="/classify")
        assert left["label"] in CLASSES
    assert built == []


def test_classify_both_without_hub_reports_vitb16_unavailable(client, cifar_test, tmp_path):
    path = _save_png(tmp_path, cifar_test.x[3])
    left, right, notes = client.predict(handle_file(str(path)), "both", api_name="/classify")
    assert left["label"] in CLASSES and len(left["confidences"]) == 5
    assert not right
    # named once, briefly; no exception text, hub name or variable in the page
    assert "ViT-B/16" in notes and "not available here (weights not on this server)" in notes
    assert "Error" not in notes and "hf-hub" not in notes and "VIT_DEMO" not in notes


def test_classify_vitb16_alone_without_hub_is_a_clear_error(client, cifar_test, tmp_path):
    from gradio_client.exceptions import AppError

    path = _save_png(tmp_path, cifar_test.x[4])
    with pytest.raises(AppError, match="ViT-B/16.*not available here") as info:
        client.predict(handle_file(str(path)), "vit-b16", api_name="/classify")
    assert "Error:" not in str(info.value) and "`" not in str(info.value)  # no Markdown either


def test_classify_unknown_model_is_refused(client, cifar_test, tmp_path):
    from gradio_client.exceptions import AppError

    path = _save_png(tmp_path, cifar_test.x[5])
    with pytest.raises(AppError, match="Unknown model"):
        client.predict(handle_file(str(path)), "../../etc/passwd", api_name="/classify")


def test_status_api_lists_every_model_with_its_state(client, cifar_test, tmp_path):
    from gradio_client.exceptions import AppError

    path = _save_png(tmp_path, cifar_test.x[6])
    with pytest.raises(AppError):  # makes sure the offline hub load has been tried and has failed
        client.predict(handle_file(str(path)), "vit-b16", api_name="/classify")
    status = {m["key"]: m for m in client.predict(api_name="/status")}
    assert status["scratch"]["state"] == "ready" and status["scratch"]["kind"] == "scratch"
    vit = status["vit-b16"]
    assert vit["state"] == "unavailable" and vit["kind"] == "timm"
    assert vit["source"] == "hf-hub:edadaltocg/vit_base_patch16_224_in21k_ft_cifar10"
    assert "VIT_DEMO_VITB16_HUB" in vit["reason"]


def test_page_says_briefly_which_model_is_missing_and_defaults_to_one_that_works(app):
    """ViT-B/16 offline: badges name it once with a short reason, the operator's details say
    how to get it, no exception text anywhere; the default model is the scratch one, and
    neither "both" nor ViT-B/16 is offered."""
    from vit_demo.ui.common import (default_choice, model_choices, operator_details,
                                    status_badges, unavailable_message)

    _, ctx = app
    ctx.registry.load_in_background("vit-b16").join()
    assert ctx.registry.status("vit-b16").state == "unavailable"
    assert default_choice(ctx.registry) == "scratch"
    assert [key for _, key in model_choices(ctx.registry)] == ["scratch"]
    badges = status_badges(ctx.registry)
    assert badges.count('data-state="unavailable"') == 1 and "weights not on this server" in badges
    assert badges.count('data-state="ready"') == 1
    details = operator_details(ctx)
    assert "network access" in details and "vit-b16-cifar10.safetensors" in details
    assert "VIT_DEMO_VITB16_HUB" in details
    message = unavailable_message(ctx.registry, "vit-b16")
    for text in (badges, details, message):
        assert "Error" not in text and "LocalEntryNotFound" not in text
        assert str(ctx.registry.weights_dir) not in text  # no path of this machine
