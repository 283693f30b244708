"""Attention probabilities from our scratch ViT and from timm ViTs, and maps that explain a prediction.

Everything here is a pure function of (model, input): no hooks, no change to ``fused_attn``
or any other module or global state, no patching of timm. Grad mode is switched with context
managers, which are thread-local, so concurrent calls on one shared model are safe. Models
must be in eval mode (dropout and stochastic depth off); this is checked, not changed.

Arguments a person chooses (method, layer, head, start layer, target class) are checked here
and refused with a ``ValueError`` whose message is written for that person; the app shows it
as it is.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn as nn

from .model import ViT
from .rollout import HEAD_FUSIONS, attention_rollout, cls_map, fuse_heads, grad_rollout

ModelKind = Literal["scratch", "timm"]
METHODS = ("rollout", "grad", "raw")


def check_timm_supported(model: nn.Module) -> None:
    """Raise ``ValueError`` unless ``model`` is a timm ViT that ``timm_forward_with_attention``
    reproduces exactly and whose [CLS] token is what the head reads."""
    # timm imports torchvision on import; only the timm path pays for it.
    from timm.layers import Attention
    from timm.models.vision_transformer import Block, VisionTransformer

    if not isinstance(model, VisionTransformer):
        raise ValueError(f"expected a timm VisionTransformer, got {type(model).__name__}")
    if not model.has_class_token:
        raise ValueError("this timm ViT has no class token; [CLS] attention maps need one")
    if model.num_reg_tokens:
        raise ValueError(f"this timm ViT has {model.num_reg_tokens} register tokens; only a single "
                         "[CLS] prefix token is supported")
    if model.global_pool != "token":
        raise ValueError(f"this timm ViT pools with global_pool={model.global_pool!r}; a [CLS] map "
                         "explains the prediction only with global_pool='token'")
    for i, blk in enumerate(model.blocks):
        if type(blk) is not Block or type(blk.attn) is not Attention:
            raise ValueError(f"block {i} is {type(blk).__name__} with {type(blk.attn).__name__}; "
                             "only timm's pre-norm Block with its standard Attention is supported")


def _check_eval(model: nn.Module) -> None:
    if model.training:
        raise ValueError("the model is in training mode; call model.eval() before collecting attention")


def timm_forward_with_attention(model: nn.Module, x: torch.Tensor
                                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run a timm ``VisionTransformer`` through its own submodules, computing attention explicitly.

    Follows ``VisionTransformer.forward_features`` / ``forward_head`` and ``Block.forward`` /
    ``Attention.forward`` (timm 1.0) step by step, with the softmax attention written out where
    timm would call ``scaled_dot_product_attention``. The logits equal ``model(x)`` (fused or
    not) up to float rounding. Works with or without grad; under grad the returned attentions
    are part of the graph, so d(logit)/d(attention) can be taken.

    Returns:
        logits (B, classes) and a list with each block's attention probabilities
        (B, heads, T, T), token 0 = [CLS].
    """
    check_timm_supported(model)
    _check_eval(model)
    x = model.patch_embed(x)  # (B, N, dim), or (B, rows, cols, dim) with dynamic_img_size
    x = model._pos_embed(x)  # (B, 1+N, dim)
    x = model.patch_drop(x)
    x = model.norm_pre(x)
    attentions = []
    for blk in model.blocks:
        attn_mod = blk.attn
        y = blk.norm1(x)  # (B, T, dim)
        B, T, _ = y.shape
        gate = attn_mod.gate(y).sigmoid() if attn_mod.gate is not None else None
        qkv = attn_mod.qkv(y).reshape(B, T, 3, attn_mod.num_heads, attn_mod.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, T, head_dim)
        q, k = attn_mod.q_norm(q), attn_mod.k_norm(k)
        attn = ((q * attn_mod.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, heads, T, T)
        attentions.append(attn)
        y = attn_mod.attn_drop(attn) @ v  # (B, heads, T, head_dim)
        y = y.transpose(1, 2).reshape(B, T, attn_mod.attn_dim)  # (B, T, heads*head_dim)
        y = attn_mod.norm(y)
        if gate is not None:
            y = y * gate
        y = attn_mod.proj_drop(attn_mod.proj(y))  # (B, T, dim)
        x = x + blk.drop_path1(blk.ls1(y))
        x = x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))
    x = model.norm(x)
    return model.forward_head(x), attentions


def _check_scratch_supported(model: nn.Module) -> None:
    if not isinstance(model, ViT):
        raise ValueError(f"expected vit_demo.model.ViT for kind 'scratch', got {type(model).__name__}")
    if model.cfg.pool != "cls":
        raise ValueError(f"this ViT pools with pool={model.cfg.pool!r}; a [CLS] map explains the "
                         "prediction only with pool='cls'")


def patch_grid(model: nn.Module, kind: ModelKind, x: torch.Tensor) -> tuple[int, int]:
    """The (rows, cols) patch grid that ``model`` makes of the images ``x`` (B, C, H, W)."""
    if kind == "scratch":
        return tuple(model.grid_size)
    if kind == "timm":
        if model.dynamic_img_size:
            return tuple(model.patch_embed.dynamic_feat_size(tuple(x.shape[-2:])))
        return tuple(model.patch_embed.grid_size)
    raise ValueError(f"kind must be 'scratch' or 'timm', got {kind!r}")


def forward_with_attention(model: nn.Module, kind: ModelKind, x: torch.Tensor
                           ) -> tuple[torch.Tensor, list[torch.Tensor], tuple[int, int]]:
    """Logits (B, classes), per-layer attention (B, heads, T, T) and the patch grid (rows, cols).

    Runs under whatever grad mode the caller has set. ``kind`` is "scratch" (our ``ViT``, via
    its ``return_attention`` path) or "timm" (a timm ``VisionTransformer``, via
    ``timm_forward_with_attention``).
    """
    if kind == "scratch":
        _check_scratch_supported(model)
        _check_eval(model)
        logits, attentions = model(x, return_attention=True)
    elif kind == "timm":
        logits, attentions = timm_forward_with_attention(model, x)
    else:
        raise ValueError(f"kind must be 'scratch' or 'timm', got {kind!r}")
    grid = patch_grid(model, kind, x)
    if attentions[0].shape[-1] != 1 + grid[0] * grid[1]:
        raise ValueError(f"{attentions[0].shape[-1]} tokens do not match [CLS] + a "
                         f"{grid[0]}x{grid[1]} grid")
    return logits, attentions, grid


class AttentionGradients(NamedTuple):
    logits: torch.Tensor  # (B, classes)
    attentions: list[torch.Tensor]  # per layer (B, heads, T, T)
    gradients: list[torch.Tensor]  # per layer d(target logit)/d(attention), (B, heads, T, T)
    grid_size: tuple[int, int]  # (rows, cols)
    target_class: torch.Tensor  # (B,) long


def attention_gradients(model: nn.Module, kind: ModelKind, x: torch.Tensor,
                        target_class: int | torch.Tensor | None = None) -> AttentionGradients:
    """Attention and d(logit of the target class)/d(attention) per layer, all detached.

    Works even when called under ``torch.inference_mode()`` or with frozen parameters: the
    input is copied into a tensor that requires grad, and gradients are taken with
    ``torch.autograd.grad`` (nothing accumulates in any ``.grad``).

    Args:
        target_class: the class per image, an int for all or a (B,) tensor; None = predicted class.

    Returns:
        ``AttentionGradients`` (a named tuple: logits, attentions, gradients, grid_size,
        target_class).
    """
    with torch.inference_mode(False), torch.enable_grad():
        x = x.detach().clone().requires_grad_(True)
        logits, attentions, grid = forward_with_attention(model, kind, x)
        if target_class is None:
            target = logits.argmax(dim=-1)  # (B,)
        else:
            target = torch.as_tensor(target_class, device=logits.device).long().expand(logits.shape[0])
            if not bool(((target >= 0) & (target < logits.shape[-1])).all()):
                raise ValueError(f"Target class {target_class} is outside the model's "
                                 f"{logits.shape[-1]} classes: use 0 to {logits.shape[-1] - 1}.")
        score = logits.gather(1, target[:, None]).sum()  # images are independent: sum = per-image grads
        gradients = torch.autograd.grad(score, attentions)
    return AttentionGradients(logits.detach(), [a.detach() for a in attentions],
                              [g.detach() for g in gradients], grid, target)


def explain(model: nn.Module, kind: ModelKind, x: torch.Tensor, method: str = "rollout",
            head_fusion: str = "mean", discard_ratio: float = 0.0, start_layer: int = 0,
            target_class: int | torch.Tensor | None = None, layer: int | None = None,
            head: int | None = None) -> dict:
    """A (rows, cols) map per image of where the model's [CLS] token looks, with the logits.

    Methods:
        "rollout": attention rollout (``head_fusion``, ``discard_ratio``, ``start_layer``).
        "grad": gradient-weighted rollout for ``target_class`` (None = predicted class), from
            ``start_layer``; heads are always averaged, ``head_fusion`` and ``discard_ratio``
            do not apply.
        "raw": the [CLS] row of one layer's attention over the patches; ``layer`` (default:
            the last, negative indices count from the end) and ``head`` (default None: heads
            fused with ``head_fusion``).

    Args:
        x: preprocessed images (B, C, H, W) as the model expects them.

    Returns:
        dict with "map" (B, rows, cols) float tensor (raw weights, not rescaled for display),
        "logits" (B, classes), "grid_size" (rows, cols), "method", and "target_class"
        ((B,) long tensor for "grad", else None). All tensors are detached.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}. Choose one of: {', '.join(METHODS)}.")
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"Unknown head fusion {head_fusion!r}. Choose one of: {', '.join(HEAD_FUSIONS)}.")
    target = None
    if method == "grad":
        logits, attentions, gradients, grid, target = attention_gradients(model, kind, x, target_class)
        heatmap = cls_map(grad_rollout(attentions, gradients, start_layer), grid)
    else:
        with torch.inference_mode():
            logits, attentions, grid = forward_with_attention(model, kind, x)
            if method == "rollout":
                rollout = attention_rollout(attentions, head_fusion, discard_ratio, start_layer)
                heatmap = cls_map(rollout, grid)
            else:
                heatmap = _raw_cls_map(attentions, grid, head_fusion, layer, head)
    return {"map": heatmap, "logits": logits, "grid_size": grid, "method": method,
            "target_class": target}


def _raw_cls_map(attentions: list[torch.Tensor], grid: tuple[int, int], head_fusion: str,
                 layer: int | None, head: int | None) -> torch.Tensor:
    """The [CLS] row of one layer (one head, or heads fused) over the patches: (B, rows, cols)."""
    depth = len(attentions)
    layer = depth - 1 if layer is None else layer
    if not -depth <= layer < depth:
        raise ValueError(f"Layer {layer} is outside the model's {depth} layers: use 0 to "
                         f"{depth - 1}, or -1 for the last.")
    attn = attentions[layer]  # (B, heads, T, T)
    if head is None:
        fused = fuse_heads(attn, head_fusion)  # (B, T, T)
    else:
        heads = attn.shape[1]
        if not -heads <= head < heads:
            raise ValueError(f"Head {head} is outside the model's {heads} heads: use 0 to "
                             f"{heads - 1}, or leave it empty for all heads.")
        fused = attn[:, head]  # (B, T, T)
    return cls_map(fused, grid)
