"""The compare tab reads measured figures from the cards and says why a model has none."""

from __future__ import annotations

import html
import re

import torch
from conftest import save_tiny_scratch

from vit_demo.card import read_card
from vit_demo.data import CIFAR10_DATA_CONFIG, CLASSES, preprocess_batch
from vit_demo.evaluate import model_metrics, store_metrics
from vit_demo.registry import SCRATCH_CHECKPOINT, Registry
from vit_demo.ui.compare import compare


def test_compare_shows_card_figures_and_unavailable_vitb16(tmp_path, cifar_test):
    model = save_tiny_scratch(tmp_path, SCRATCH_CHECKPOINT, seed=3)
    subset = cifar_test.subset(torch.arange(300))
    card = read_card(tmp_path, SCRATCH_CHECKPOINT)
    store_metrics(tmp_path, card, model_metrics(model, subset, CIFAR10_DATA_CONFIG, 10, latency_runs=3))

    with torch.no_grad():
        pred = model(preprocess_batch(subset.x, CIFAR10_DATA_CONFIG)).argmax(-1)
    accuracy = (pred == subset.y).float().mean().item()
    per_class = [((pred == c) & (subset.y == c)).sum().item() / (subset.y == c).sum().item()
                 for c in range(10)]

    registry = Registry(tmp_path, allow_hub=True)
    registry.get("scratch")
    registry.load_in_background("vit-b16").join()  # offline: fails, with the reason
    summary, classes_html, figures = compare(registry)

    scratch_row = next(row for row in rows(summary) if row[0].startswith("Scratch ViT"))
    assert scratch_row[1] == f"{100 * accuracy:.2f} %" and scratch_row[2] == "300"
    assert scratch_row[3] == f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M"
    assert "by the evaluation code" in scratch_row[-1]  # where the figures come from
    vit_row = next(row for row in rows(summary) if row[0].startswith("ViT-B/16"))
    assert vit_row[-1] == "not available on this server"  # the operator's accordion says why
    assert "CPU latency, 1 image (card)" in summary and "this server" in summary
    for c, name in enumerate(CLASSES):
        assert [name, f"{100 * per_class[c]:.1f} %"] in rows(classes_html)
    # one whole figure, inline, captioned with where it comes from
    assert figures.count("<img") == 1 and "data:image/png;base64," in figures
    assert "card's test run" in html.unescape(figures)
    assert "Error" not in summary  # the reason, not the exception


def rows(table_html: str) -> list[list[str]]:
    """The body rows of the HTML table, as cell texts."""
    body = table_html.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return [[html.unescape(re.sub(r"<[^>]+>", "", c)) for c in re.findall(r"<td[^>]*>(.*?)</td>", row)]
            for row in re.findall(r"<tr>(.*?)</tr>", body)]


def test_compare_without_figures_says_so(tmp_path):
    save_tiny_scratch(tmp_path, SCRATCH_CHECKPOINT)
    summary, classes_html, figures = compare(Registry(tmp_path, allow_hub=False))
    assert "no measured figures yet" in summary and "python -m" not in summary
    assert "No per-class figures yet." in classes_html and "<img" not in figures
