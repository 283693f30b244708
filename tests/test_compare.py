"""The compare tab reads measured figures from the cards and says why a model has none."""

from __future__ import annotations

import torch
from conftest import save_tiny_scratch

from vit_demo.checkpoint import load_card
from vit_demo.data import CIFAR10_DATA_CONFIG, CLASSES, preprocess_batch
from vit_demo.evaluate import model_metrics, store_metrics
from vit_demo.examples import Gallery
from vit_demo.registry import SCRATCH_CHECKPOINT, Registry
from vit_demo.ui.common import AppContext
from vit_demo.ui.compare import compare


def test_compare_shows_card_figures_and_unavailable_vitb16(tmp_path, cifar_test):
    model = save_tiny_scratch(tmp_path, SCRATCH_CHECKPOINT, seed=3)
    subset = cifar_test.subset(torch.arange(300))
    card = load_card(tmp_path, SCRATCH_CHECKPOINT)
    store_metrics(tmp_path, card, model_metrics(model, subset, CIFAR10_DATA_CONFIG, 10, latency_runs=3))

    with torch.no_grad():
        pred = model(preprocess_batch(subset.x, CIFAR10_DATA_CONFIG)).argmax(-1)
    accuracy = (pred == subset.y).float().mean().item()
    per_class = [((pred == c) & (subset.y == c)).sum().item() / (subset.y == c).sum().item()
                 for c in range(10)]

    registry = Registry(tmp_path, allow_hub=True)
    registry.get("scratch")
    registry.load_in_background("vit-b16").join()  # offline: fails, with the reason
    summary, classes_md, confusion = compare(AppContext(registry, Gallery([], "none")))

    scratch_row = next(line for line in summary.splitlines() if line.startswith("| Scratch ViT"))
    assert f"{100 * accuracy:.2f} %" in scratch_row and "| 300 |" in scratch_row
    assert f"{model.num_params() / 1e6:.2f} M" in scratch_row
    vit_row = next(line for line in summary.splitlines() if line.startswith("| ViT-B/16"))
    assert "unavailable" in vit_row and "Hugging Face hub" in vit_row
    for c, name in enumerate(CLASSES):
        assert f"| {name} | {100 * per_class[c]:.1f} % |" in classes_md
    assert len(confusion) == 1 and confusion[0][0].endswith(".png")


def test_compare_without_figures_says_how_to_measure(tmp_path):
    save_tiny_scratch(tmp_path, SCRATCH_CHECKPOINT)
    summary, classes_md, confusion = compare(AppContext(Registry(tmp_path, allow_hub=False),
                                                        Gallery([], "none")))
    assert "python -m vit_demo evaluate --name vit-scratch-cifar10 --update-card" in summary
    assert classes_md == "No per-class figures yet." and confusion == []
