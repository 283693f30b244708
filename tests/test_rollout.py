"""Attention rollout against independent numpy formulas, and attention collection against timm.

The numpy references are written from the papers' formulas (Abnar & Zuidema 2020 rollout,
Chefer et al. 2021 gradient weighting), loops and all, without calling ``vit_demo.rollout``.
"""

from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import timm
import torch
from timm.layers import Attention
from timm.models.vision_transformer import VisionTransformer
from timm.utils import AttentionExtract

from vit_demo.adapters import adapter_for, timm_forward_with_attention
from vit_demo.attention import attention_gradients, explain, forward_with_attention
from vit_demo.model import PRESETS, ViT, convert_timm_state_dict
from vit_demo.rollout import attention_rollout, cls_map, discard_lowest, fuse_heads, grad_rollout


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------------------------
# Independent numpy references


def random_attention(rng: np.random.Generator, batch: int, heads: int, tokens: int) -> np.ndarray:
    """Row-stochastic (B, heads, T, T) matrices, from a softmax of random logits."""
    logits = rng.normal(scale=2.0, size=(batch, heads, tokens, tokens))
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_rollout(attns: list[np.ndarray], fusion: str = "mean", discard_ratio: float = 0.0,
               start_layer: int = 0) -> np.ndarray:
    """Rollout per image: R = A_L ... A_start, A_l = rownorm(fused_l (patch rows discarded) + I)."""
    batch, _, tokens, _ = attns[0].shape
    out = np.empty((batch, tokens, tokens))
    for b in range(batch):
        r = np.eye(tokens)
        for layer in range(start_layer, len(attns)):
            w = attns[layer][b]
            fused = {"mean": w.mean(axis=0), "max": w.max(axis=0), "min": w.min(axis=0)}[fusion].copy()
            k = int(discard_ratio * (tokens - 1))
            for i in range(1, tokens):  # patch queries only; [CLS] row kept whole
                lowest = np.argsort(fused[i, 1:], kind="stable")[:k]  # patch keys only
                fused[i, 1 + lowest] = 0.0
            a = fused + np.eye(tokens)
            for i in range(tokens):
                a[i] = a[i] / a[i].sum()
            r = a @ r
        out[b] = r
    return out


def np_paper_rollout(attns: list[np.ndarray]) -> np.ndarray:
    """Abnar & Zuidema's equation with mean heads: prod of (0.5 W + 0.5 I), no normalisation."""
    batch, _, tokens, _ = attns[0].shape
    out = np.empty((batch, tokens, tokens))
    for b in range(batch):
        r = np.eye(tokens)
        for w in attns:
            r = (0.5 * w[b].mean(axis=0) + 0.5 * np.eye(tokens)) @ r
        out[b] = r
    return out


def np_grad_rollout(attns: list[np.ndarray], grads: list[np.ndarray], start_layer: int = 0) -> np.ndarray:
    """R = A_L ... A_start, A_l = rownorm(mean_h(max(grad * attn, 0)) + I)."""
    batch, heads, tokens, _ = attns[0].shape
    out = np.empty((batch, tokens, tokens))
    for b in range(batch):
        r = np.eye(tokens)
        for layer in range(start_layer, len(attns)):
            rel = np.zeros((tokens, tokens))
            for h in range(heads):
                rel += np.maximum(attns[layer][b, h] * grads[layer][b, h], 0.0) / heads
            a = rel + np.eye(tokens)
            a = a / a.sum(axis=1, keepdims=True)
            r = a @ r
        out[b] = r
    return out


def to_torch(arrays: list[np.ndarray]) -> list[torch.Tensor]:
    return [torch.from_numpy(a) for a in arrays]


# ----------------------------------------------------------------------------------------------
# rollout.py


GRIDS = [(2, 3), (3, 2), (1, 1), (4, 4), (3, 5)]


@pytest.mark.parametrize("depth", [1, 2, 6])
@pytest.mark.parametrize("heads", [1, 3, 4])
@pytest.mark.parametrize("grid", GRIDS)
def test_rollout_matches_numpy(depth, heads, grid):
    rng = np.random.default_rng(depth * 100 + heads * 10 + grid[0] * grid[1])
    tokens = 1 + grid[0] * grid[1]
    attns = [random_attention(rng, 2, heads, tokens) for _ in range(depth)]
    for fusion in ("mean", "max", "min"):
        for start in range(depth):
            got = attention_rollout(to_torch(attns), fusion, 0.0, start)
            assert got.shape == (2, tokens, tokens)
            want = np_rollout(attns, fusion, 0.0, start)
            np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)
    for ratio in (0.2, 0.5, 0.9):
        got = attention_rollout(to_torch(attns), "mean", ratio, 0)
        np.testing.assert_allclose(got.numpy(), np_rollout(attns, "mean", ratio, 0), rtol=1e-10, atol=1e-12)
    # Mean fusion without discarding is exactly the paper's 0.5 W + 0.5 I.
    np.testing.assert_allclose(attention_rollout(to_torch(attns)).numpy(), np_paper_rollout(attns),
                               rtol=1e-10, atol=1e-12)


def test_rollout_accepts_stacked_tensor_and_float32():
    rng = np.random.default_rng(1)
    attns = [random_attention(rng, 3, 2, 7) for _ in range(4)]
    stacked = torch.from_numpy(np.stack(attns)).float()  # (L, B, heads, T, T)
    got = attention_rollout(stacked, "max", 0.3, 1)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), np_rollout(attns, "max", 0.3, 1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
def test_identity_attention_gives_identity(fusion):
    tokens = 7  # [CLS] + 2x3
    eye = torch.eye(tokens, dtype=torch.float64).expand(2, 3, tokens, tokens)  # (B, heads, T, T)
    for ratio in (0.0, 0.5, 0.8):
        got = attention_rollout([eye] * 4, fusion, ratio)
        torch.testing.assert_close(got, torch.eye(tokens, dtype=torch.float64).expand(2, tokens, tokens))


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
@pytest.mark.parametrize("ratio", [0.0, 0.4, 0.9])
def test_rows_sum_to_one_after_every_step(fusion, ratio):
    rng = np.random.default_rng(2)
    attns = to_torch([random_attention(rng, 2, 3, 10) for _ in range(5)])
    for start in range(5):
        for end in range(start + 1, 6):
            got = attention_rollout(attns[:end], fusion, ratio, start)
            torch.testing.assert_close(got.sum(dim=-1), torch.ones(2, 10, dtype=torch.float64))
            assert (got >= 0).all()


def test_discard_ratio_zero_is_plain_rollout():
    rng = np.random.default_rng(3)
    attns = to_torch([random_attention(rng, 2, 4, 7) for _ in range(3)])
    plain = attention_rollout(attns)
    assert torch.equal(attention_rollout(attns, discard_ratio=0.0), plain)
    # A ratio too small to drop a single one of the 6 patch weights is also a no-op.
    assert torch.equal(attention_rollout(attns, discard_ratio=0.1), plain)
    assert not torch.allclose(attention_rollout(attns, discard_ratio=0.5), plain)


def test_discard_never_touches_cls_row_or_column():
    rng = np.random.default_rng(4)
    tokens = 7  # [CLS] + 2x3
    fused = torch.from_numpy(random_attention(rng, 2, 1, tokens)[:, 0])  # (B, T, T)
    # Make every [CLS] entry the smallest in its row, so a naive discard would take them first.
    fused[:, 0, :] = 1e-9
    fused[:, :, 0] = 1e-9
    original = fused.clone()
    for ratio in (0.2, 0.5, 0.9):
        out = discard_lowest(fused, ratio)
        assert torch.equal(fused, original), "input must not be modified"
        assert torch.equal(out[:, 0, :], original[:, 0, :])
        assert torch.equal(out[:, :, 0], original[:, :, 0])
        k = int(ratio * (tokens - 1))
        zeros = (out[:, 1:, 1:] == 0).sum(dim=-1)  # (B, N) zeros per patch row
        assert (zeros == k).all()
        # The kept patch weights are each row's largest.
        for b in range(2):
            for i in range(1, tokens):
                kept = out[b, i, 1:][out[b, i, 1:] != 0]
                dropped = original[b, i, 1:][out[b, i, 1:] == 0]
                assert kept.min() > dropped.max()
    # Through the rollout (one layer): the [CLS] row is the undiscarded, normalised row.
    heads = fused[:, None]  # (B, 1, T, T)
    got = attention_rollout([heads], discard_ratio=0.9)
    cls_row = original[:, 0] + torch.eye(tokens, dtype=torch.float64)[0]
    torch.testing.assert_close(got[:, 0], cls_row / cls_row.sum(dim=-1, keepdim=True))
    assert (got[:, 1:, 0] > 0).all()


def test_cls_map_on_non_square_grid():
    rows, cols = 2, 3
    rollout = torch.arange(2 * 7 * 7, dtype=torch.float32).reshape(2, 7, 7)  # (B, T, T)
    m = cls_map(rollout, (rows, cols))
    assert m.shape == (2, rows, cols)
    for b in range(2):
        for r in range(rows):
            for c in range(cols):
                assert m[b, r, c] == rollout[b, 0, 1 + r * cols + c]
    assert torch.equal(cls_map(rollout, (3, 2)).flatten(1), rollout[:, 0, 1:])
    with pytest.raises(ValueError, match="do not fill a 3x3 grid"):
        cls_map(rollout, (3, 3))
    with pytest.raises(ValueError, match=r"expected a \(B, T, T\) rollout"):
        cls_map(rollout[0], (rows, cols))


@pytest.mark.parametrize("depth", [1, 3])
@pytest.mark.parametrize("heads", [1, 4])
@pytest.mark.parametrize("grid", [(2, 3), (4, 4)])
def test_grad_rollout_matches_numpy(depth, heads, grid):
    rng = np.random.default_rng(depth * 10 + heads + grid[1])
    tokens = 1 + grid[0] * grid[1]
    attns = [random_attention(rng, 2, heads, tokens) for _ in range(depth)]
    grads = [rng.normal(size=(2, heads, tokens, tokens)) for _ in range(depth)]
    for start in range(depth):
        got = grad_rollout(to_torch(attns), to_torch(grads), start)
        np.testing.assert_allclose(got.numpy(), np_grad_rollout(attns, grads, start), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(got.sum(dim=-1), torch.ones(2, tokens, dtype=torch.float64))
    # All-negative relevance is clamped away: identity.
    neg = [-np.abs(g) for g in grads]
    torch.testing.assert_close(grad_rollout(to_torch(attns), to_torch(neg)),
                               torch.eye(tokens, dtype=torch.float64).expand(2, tokens, tokens))


def test_bad_arguments():
    attn = torch.full((1, 2, 7, 7), 1 / 7)
    with pytest.raises(ValueError):
        fuse_heads(attn, "median")
    with pytest.raises(ValueError, match="Start layer 1 is outside the model's 1 layers: use 0 to 0"):
        attention_rollout([attn], start_layer=1)
    with pytest.raises(ValueError, match="Discard ratio must be at least 0 and below 1"):
        attention_rollout([attn], discard_ratio=1.0)
    with pytest.raises(ValueError, match="expected a list of"):
        attention_rollout([attn[0]])  # unbatched
    with pytest.raises(ValueError, match="no layers"):
        attention_rollout([])
    with pytest.raises(ValueError, match="gradients"):
        grad_rollout([attn], [attn[:, :1]])


# ----------------------------------------------------------------------------------------------
# attention.py against timm


def sharpen(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights large enough that attention is far from uniform (a discriminating test)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.copy_(torch.randn(p.shape, generator=gen) * (0.3 if p.ndim > 1 else 0.1))
    return model


def small_timm(seed: int = 0, gated: bool = False, **kwargs) -> VisionTransformer:
    """A small timm ViT (2x3 patch grid by default) with sharp random weights, in eval mode.

    ``gated`` swaps in timm's Attention with its output gate (VisionTransformer has no switch).
    """
    cfg = dict(img_size=(16, 24), patch_size=8, num_classes=5, embed_dim=32, depth=3, num_heads=4)
    cfg.update(kwargs)
    torch.manual_seed(seed)
    model = VisionTransformer(**cfg)
    if gated:
        for blk in model.blocks:
            blk.attn = Attention(cfg["embed_dim"], num_heads=cfg["num_heads"], qkv_bias=True, gated=True)
    return sharpen(model, seed).eval()


def unfused_reference(model: VisionTransformer, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """timm's own explicit attention path: a deep copy with fused attention off, via AttentionExtract."""
    ref = copy.deepcopy(model)
    for blk in ref.blocks:
        blk.attn.fused_attn = False
    with torch.inference_mode():
        out = AttentionExtract(ref, method="hook")(x)
        logits = ref(x)
    assert len(out) == len(model.blocks)
    return logits, list(out.values())


def module_state(model: torch.nn.Module) -> dict:
    """Everything a collection call must leave as it was."""
    return {
        "fused": [getattr(m, "fused_attn", None) for m in model.modules()],
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad for p in model.parameters()],
        "hooks": [len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                  + len(m._backward_pre_hooks) for m in model.modules()],
        "state": {k: v.clone() for k, v in model.state_dict().items()},
    }


def assert_state_unchanged(before: dict, model: torch.nn.Module) -> None:
    after = module_state(model)
    for key in ("fused", "training", "requires_grad", "hooks"):
        assert before[key] == after[key], key
    assert all(g is None for g in after["grads"])
    assert before["state"].keys() == after["state"].keys()
    assert all(torch.equal(before["state"][k], after["state"][k]) for k in before["state"])
    mod = torch.nn.modules.module
    assert not (mod._global_forward_hooks or mod._global_forward_pre_hooks or mod._global_backward_hooks)


TIMM_VARIANTS = {
    "plain": {},
    "qknorm-layerscale": dict(qk_norm=True, init_values=0.5),
    "prenorm-noembedclass": dict(pre_norm=True, no_embed_class=True, qkv_bias=False),
    "scalenorm": dict(scale_attn_norm=True, mlp_ratio=2.0),
    "gated": dict(gated=True),
}


@pytest.mark.parametrize("variant", TIMM_VARIANTS)
def test_timm_attention_matches_unfused_timm(variant):
    model = small_timm(1, **TIMM_VARIANTS[variant])
    assert all(blk.attn.fused_attn for blk in model.blocks), "fused attention must be on for this test"
    x = torch.randn(2, 3, 16, 24, generator=torch.Generator().manual_seed(2))
    before = module_state(model)
    with torch.inference_mode():
        logits, attns = timm_forward_with_attention(model, x)
        fused_logits = model(x)
    assert_state_unchanged(before, model)
    ref_logits, ref_attns = unfused_reference(model, x)
    assert adapter_for("timm").patch_grid(model, x) == (2, 3)
    assert attns[0].shape == (2, 4, 7, 7)
    assert max(a.max().item() for a in attns) > 0.5, "attention should be peaked for a sharp test"
    torch.testing.assert_close(logits, fused_logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=1e-5)
    for got, ref in zip(attns, ref_attns, strict=True):
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)


def test_timm_dynamic_img_size_uses_the_input_grid():
    model = small_timm(3, dynamic_img_size=True)  # built for 16x24 (2x3), fed 24x16 (3x2)
    x = torch.randn(1, 3, 24, 16, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        logits, attns, grid = forward_with_attention(model, "timm", x)
    ref_logits, ref_attns = unfused_reference(model, x)
    assert grid == (3, 2)
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=1e-5)
    for got, ref in zip(attns, ref_attns, strict=True):
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)
    assert explain(model, "timm", x)["map"].shape == (1, 3, 2)


def test_timm_vit_b16_shape_matches_unfused_timm():
    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=10).eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    before = module_state(model)
    with torch.inference_mode():
        logits, attns, grid = forward_with_attention(model, "timm", x)
        fused_logits = model(x)
    assert_state_unchanged(before, model)
    assert grid == (14, 14) and len(attns) == 12 and attns[0].shape == (1, 12, 197, 197)
    ref_logits, ref_attns = unfused_reference(model, x)
    torch.testing.assert_close(logits, fused_logits, rtol=0, atol=1e-4)
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=1e-4)
    for got, ref in zip(attns, ref_attns, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-7)


def test_timm_gradients_match_unfused_timm():
    model = small_timm(5)
    x = torch.randn(2, 3, 16, 24, generator=torch.Generator().manual_seed(5))
    before = module_state(model)
    logits, attns, grads, grid, target = attention_gradients(model, "timm", x, torch.tensor([1, 4]))
    assert_state_unchanged(before, model)
    assert target.tolist() == [1, 4] and grid == (2, 3)

    ref = copy.deepcopy(model)
    captured = []
    handles = []
    for blk in ref.blocks:
        blk.attn.fused_attn = False
        handles.append(blk.attn.attn_drop.register_forward_hook(lambda m, i, o: captured.append(o)))
    ref_logits = ref(x)
    ref_grads = torch.autograd.grad(ref_logits[0, 1] + ref_logits[1, 4], captured)
    for h in handles:
        h.remove()
    torch.testing.assert_close(logits, ref_logits.detach(), rtol=0, atol=1e-5)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert any(g.abs().max() > 0 for g in grads)


def test_unsupported_timm_variants_are_refused():
    x = torch.randn(1, 3, 16, 24)
    cases = {
        "class token": dict(class_token=False, global_pool="avg"),
        "register": dict(reg_tokens=4),
        "global_pool": dict(global_pool="avg"),
    }
    for message, kwargs in cases.items():
        with pytest.raises(ValueError, match=message):
            explain(small_timm(0, **kwargs), "timm", x)
    with pytest.raises(ValueError, match="training mode"):
        explain(small_timm(0).train(), "timm", x)
    with pytest.raises(ValueError, match="VisionTransformer"):
        timm_forward_with_attention(ViT(PRESETS["cifar10-64x2/4"]).eval(), torch.randn(1, 3, 32, 32))


def scratch_and_timm_pair(seed: int = 7) -> tuple[ViT, VisionTransformer]:
    cfg = PRESETS["cifar10-64x2/4"]
    tm = small_timm(seed, img_size=cfg.image_size, patch_size=cfg.patch_size, num_classes=cfg.num_classes,
                    embed_dim=cfg.dim, depth=cfg.depth, num_heads=cfg.heads, mlp_ratio=cfg.mlp_ratio)
    ours = ViT(cfg)
    ours.load_state_dict(convert_timm_state_dict(tm.state_dict(), cfg))
    return ours.eval(), tm


def test_scratch_attention_equals_timm_for_converted_weights():
    ours, tm = scratch_and_timm_pair()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(8))
    with torch.inference_mode():
        logits, attns, grid = forward_with_attention(ours, "scratch", x)
        t_logits, t_attns, t_grid = forward_with_attention(tm, "timm", x)
    assert grid == t_grid == (8, 8)
    torch.testing.assert_close(logits, t_logits, rtol=0, atol=1e-5)
    for a, b in zip(attns, t_attns, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    for method in ("rollout", "grad", "raw"):
        r1 = explain(ours, "scratch", x, method=method, discard_ratio=0.3)
        r2 = explain(tm, "timm", x, method=method, discard_ratio=0.3)
        torch.testing.assert_close(r1["map"], r2["map"], rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# explain


def test_explain_methods_and_arguments():
    ours, _ = scratch_and_timm_pair()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    before = module_state(ours)
    with torch.inference_mode():
        logits, attns, grid = forward_with_attention(ours, "scratch", x)

    r = explain(ours, "scratch", x, method="rollout", head_fusion="max", discard_ratio=0.5, start_layer=1)
    want = cls_map(attention_rollout(attns, "max", 0.5, 1), grid)
    torch.testing.assert_close(r["map"], want)
    torch.testing.assert_close(r["logits"], logits)
    assert r["grid_size"] == (8, 8) and r["target_class"] is None and r["method"] == "rollout"

    raw = explain(ours, "scratch", x, method="raw", layer=0, head=1)["map"]
    torch.testing.assert_close(raw, attns[0][:, 1, 0, 1:].reshape(2, 8, 8))
    raw_last = explain(ours, "scratch", x, method="raw", head_fusion="mean")["map"]
    torch.testing.assert_close(raw_last, attns[-1].mean(dim=1)[:, 0, 1:].reshape(2, 8, 8))
    torch.testing.assert_close(explain(ours, "scratch", x, method="raw", layer=-1, head=-1)["map"],
                               attns[-1][:, -1, 0, 1:].reshape(2, 8, 8))

    g = explain(ours, "scratch", x, method="grad")
    assert g["target_class"].tolist() == logits.argmax(-1).tolist()
    g3 = explain(ours, "scratch", x, method="grad", target_class=3)
    assert g3["target_class"].tolist() == [3, 3]
    assert not torch.allclose(g3["map"], explain(ours, "scratch", x, method="grad", target_class=4)["map"])
    with torch.inference_mode():  # the gradient path works inside the caller's inference mode
        inside = explain(ours, "scratch", x, method="grad", target_class=3)
    torch.testing.assert_close(inside["map"], g3["map"])
    assert not g3["map"].requires_grad
    assert_state_unchanged(before, ours)

    for kwargs in (dict(method="cam"), dict(head_fusion="median"), dict(method="raw", layer=2),
                   dict(method="raw", head=2), dict(method="grad", target_class=10)):
        with pytest.raises(ValueError):
            explain(ours, "scratch", x, **kwargs)
    with pytest.raises(ValueError):
        explain(ours, "vit", x)


def test_explain_with_frozen_parameters():
    ours, _ = scratch_and_timm_pair()
    ours.requires_grad_(False)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(10))
    r = explain(ours, "scratch", x, method="grad")
    assert r["map"].shape == (1, 8, 8) and r["map"].sum() > 0
    assert not any(p.requires_grad for p in ours.parameters())


def test_explain_is_thread_safe_on_a_shared_model():
    ours, tm = scratch_and_timm_pair()
    xs = [torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(20 + i)) for i in range(6)]
    jobs = [(model, kind, x, method) for x in xs for model, kind in ((ours, "scratch"), (tm, "timm"))
            for method in ("rollout", "grad", "raw")]
    sequential = [explain(m, k, x, method=meth)["map"] for m, k, x, meth in jobs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(lambda job: explain(job[0], job[1], job[2], method=job[3])["map"], jobs))
    for a, b in zip(sequential, parallel, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
