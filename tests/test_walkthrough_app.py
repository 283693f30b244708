"""``/walkthrough`` on the launched app, through gradio_client: the figures, the top-5 and the
numbers per model, checked against the model's blocks run by hand here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from vit_demo.inference import preprocess

pytestmark = pytest.mark.usefixtures("one_thread")
FIGURE_MIN_WIDTH = 600  # px: at least 300 px on a phone's 2x screen, text drawn for it


def save_image(tmp_path: Path, cifar_test, index: int, size: tuple[int, int] = (80, 60)) -> Path:
    """A CIFAR-10 test image enlarged to ``size`` (not square: the model's crop matters)."""
    path = tmp_path / f"walk-{index}.png"
    Image.fromarray(cifar_test.x[index].numpy()).resize(size, Image.BICUBIC).save(path)
    return path


def lens_by_hand(model, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(class probabilities read by ``head(norm(.))`` from [CLS] after each block (blocks,
    classes), each block's attention (heads, T, T)) of our ViT on ``x`` (1, C, H, W)."""
    with torch.no_grad():
        tokens = model.patch_embed(x)
        tokens = torch.cat([model.cls_token, tokens], dim=1) + model.pos_embed
        lens, attentions = [], []
        for block in model.blocks:
            tokens, attn = block(tokens, return_attention=True)
            lens.append(model.head(model.norm(tokens[:, 0])).softmax(dim=-1)[0])
            attentions.append(attn[0])
    return torch.stack(lens), attentions


def read_png(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_walkthrough_api_serves_the_four_steps_of_the_scratch_model(app, client, cifar_test, tmp_path):
    _, ctx = app
    path = save_image(tmp_path, cifar_test, 4)
    *figures, answer, notes, values = client.predict(handle_file(str(path)), "scratch",
                                                     api_name="/walkthrough")
    assert len(figures) == 4
    for figure in figures:
        assert read_png(figure).shape[1] >= FIGURE_MIN_WIDTH
    loaded = ctx.registry.get("scratch")
    x = preprocess(Image.open(path).convert("RGB"), loaded.data_cfg)
    lens, attentions = lens_by_hand(loaded.model, x)
    got = values["scratch"]
    assert got["classes"] == list(loaded.classes)
    assert got["grid_size"] == [8, 8] and got["patch_size"] == [4, 4] and got["input_size"] == [32, 32]
    np.testing.assert_allclose(got["lens"], lens.numpy(), atol=1e-4)
    with torch.no_grad():
        output = loaded.model(x).softmax(dim=-1)[0]
    np.testing.assert_allclose(got["lens"][-1], output.numpy(), atol=1e-4)
    tops = lens.argmax(dim=-1).tolist()
    assert got["settled_block"] == 1 + min(b for b in range(len(tops)) if set(tops[b:]) == {tops[-1]})
    maps = [a.mean(dim=0)[0, 1:].reshape(8, 8).numpy() for a in attentions]
    np.testing.assert_allclose(got["attention"], maps, rtol=1e-3, atol=1e-6)
    for step in ("patch_embeddings", "with_position_embeddings"):
        pca = got["token_pca"][step]
        assert np.asarray(pca["rgb"]).shape == (8, 8, 3) and len(pca["cls_rgb"]) == 3
        assert 0 < sum(pca["explained_variance"]) <= 1
    # the answer: the top five of the output, which is the lens's last row
    top = output.topk(5)
    assert [c["label"] for c in answer["confidences"]] == [loaded.classes[i] for i in top.indices]
    assert answer["label"] == loaded.classes[int(np.argmax(got["lens"][-1]))]
    assert "Scratch ViT" in notes and f"from block {got['settled_block']} of {len(lens)} on" in notes


def test_walkthrough_api_refuses_what_it_cannot_walk_through(client, cifar_test, tmp_path):
    path = save_image(tmp_path, cifar_test, 0)
    with pytest.raises(AppError, match="one model at a time"):
        client.predict(handle_file(str(path)), "both", api_name="/walkthrough")
    with pytest.raises(AppError, match="Unknown model 'nope'"):
        client.predict(handle_file(str(path)), "nope", api_name="/walkthrough")
    with pytest.raises(AppError, match="Add an image first"):
        client.predict(None, "scratch", api_name="/walkthrough")
    with pytest.raises(AppError) as unavailable:  # offline: no ViT-B/16 in the shared app
        client.predict(handle_file(str(path)), "vit-b16", api_name="/walkthrough")
    message = str(unavailable.value)
    assert "is not available here" in message and "Error" not in message and "/" + "tmp" not in message


def test_walkthrough_api_vit_b16(vitb16_app, cifar_test, tmp_path):
    url, ctx = vitb16_app
    path = save_image(tmp_path, cifar_test, 9, (300, 240))
    client = Client(url, verbose=False)
    try:
        *figures, answer, _, values = client.predict(handle_file(str(path)), "vit-b16",
                                                     api_name="/walkthrough")
    finally:
        client.close()
    got = values["vit-b16"]
    assert got["grid_size"] == [14, 14] and got["patch_size"] == [16, 16]
    assert np.asarray(got["attention"]).shape == (12, 14, 14)
    assert np.asarray(got["lens"]).shape == (12, 10)
    assert np.asarray(got["token_pca"]["with_position_embeddings"]["rgb"]).shape == (14, 14, 3)
    loaded = ctx.registry.get("vit-b16")
    with torch.no_grad():
        output = loaded.model(preprocess(Image.open(path).convert("RGB"), loaded.data_cfg))
    np.testing.assert_allclose(got["lens"][-1], output.softmax(dim=-1)[0].numpy(), atol=1e-4)
    assert answer["label"] == loaded.classes[int(output.argmax())]
    assert all(read_png(f).shape[1] >= FIGURE_MIN_WIDTH for f in figures)
