"""Maps that explain a prediction, from the attention a model's adapter captures (``adapters``).

Everything here is a pure function of (model, input): no hooks, no change to ``fused_attn``
or any other module or global state, no patching of timm. Grad mode is switched with context
managers, which are thread-local, so concurrent calls on one shared model are safe. Models
must be in eval mode (dropout and stochastic depth off); this is checked, not changed.

Arguments a person chooses (method, layer, head, start layer, target class) are refused with a
``ValueError`` whose message is written for that person; the app shows it as it is.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn

from .adapters import ModelKind, adapter_for
from .rollout import (attention_rollout, check_head_fusion, check_index, cls_map, fuse_heads,
                      grad_rollout)

METHODS = ("rollout", "grad", "raw")


def forward_with_attention(model: nn.Module, kind: ModelKind | str, x: torch.Tensor
                           ) -> tuple[torch.Tensor, list[torch.Tensor], tuple[int, int]]:
    """Logits (B, classes), per-layer attention (B, heads, T, T) and the patch grid (rows, cols),
    as ``kind``'s adapter captures them, under whatever grad mode the caller has set."""
    adapter = adapter_for(kind)
    logits, attentions = adapter.forward_with_attention(model, x)
    grid = adapter.patch_grid(model, x)
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


def attention_gradients(model: nn.Module, kind: ModelKind | str, x: torch.Tensor,
                        target_class: int | torch.Tensor | None = None) -> AttentionGradients:
    """Attention and d(logit of the target class)/d(attention) per layer, all detached;
    ``target_class``: an int for all images or a (B,) tensor, None: the predicted class.

    Works even when called under ``torch.inference_mode()`` or with frozen parameters: the
    input is copied into a tensor that requires grad, and gradients are taken with
    ``torch.autograd.grad`` (nothing accumulates in any ``.grad``).
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


def explain(model: nn.Module, kind: ModelKind | str, x: torch.Tensor, method: str = "rollout",
            head_fusion: str = "mean", discard_ratio: float = 0.0, start_layer: int = 0,
            target_class: int | torch.Tensor | None = None, layer: int | None = None,
            head: int | None = None) -> dict:
    """For the preprocessed images ``x`` (B, C, H, W): a (rows, cols) map per image of where the
    model's [CLS] token looks, with the logits.

    Methods:
        "rollout": attention rollout (``head_fusion``, ``discard_ratio``, ``start_layer``).
        "grad": gradient-weighted rollout for ``target_class`` (None = predicted class), from
            ``start_layer``; heads are always averaged, ``head_fusion`` and ``discard_ratio``
            do not apply.
        "raw": the [CLS] row of one layer's attention over the patches; ``layer`` (default:
            the last, negative indices count from the end) and ``head`` (default None: heads
            fused with ``head_fusion``).

    Returns a dict with "map" (B, rows, cols) float tensor (raw weights, not rescaled for
    display), "logits" (B, classes), "grid_size" (rows, cols), "method", and "target_class"
    ((B,) long tensor for "grad", else None). All tensors are detached.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}. Choose one of: {', '.join(METHODS)}.")
    check_head_fusion(head_fusion)
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
    check_index("Layer", layer, depth, "layers", -depth, ", or -1 for the last")
    attn = attentions[layer]  # (B, heads, T, T)
    if head is None:
        fused = fuse_heads(attn, head_fusion)  # (B, T, T)
    else:
        heads = attn.shape[1]
        check_index("Head", head, heads, "heads", -heads, ", or leave it empty for all heads")
        fused = attn[:, head]  # (B, T, T)
    return cls_map(fused, grid)
