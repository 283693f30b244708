"""Attention rollout and its gradient-weighted variant, as pure tensor functions (torch only).

Conventions: every layer's attention is ``(B, heads, T, T)`` with ``T = 1 + rows * cols``,
token 0 is [CLS] and rows index queries (each row of a softmax attention sums to 1). A rollout
matrix ``R`` is ``(B, T, T)``; ``R[b, 0, 1:]`` is how much of the [CLS] token's final
representation flows, through attention and the residual path, from each patch token.

References:
    Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers" (arXiv:2005.00928):
    attention rollout ``R = A_L @ ... @ A_1`` with ``A_l = norm(W_l + I)``.
    Chefer, Gur & Wolf 2021, "Generic Attention-model Explainability for Interpreting Bi-Modal
    and Encoder-Decoder Transformers" (arXiv:2103.15679): each layer's attention weighted by
    its gradient, ``E_h[(grad A * A)^+]``, before it enters the product.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

HEAD_FUSIONS = ("mean", "max", "min")


def _stack_layers(attentions: Sequence[torch.Tensor] | torch.Tensor, name: str) -> torch.Tensor:
    """Layers as one floating tensor (L, B, heads, T, T), at least float32."""
    if not isinstance(attentions, torch.Tensor) and len(attentions) == 0:
        raise ValueError(f"{name}: no layers")
    stacked = attentions if isinstance(attentions, torch.Tensor) else torch.stack(list(attentions))
    if stacked.ndim != 5:
        raise ValueError(f"{name}: expected a list of (B, heads, T, T) tensors or one "
                         f"(L, B, heads, T, T) tensor, got shape {tuple(stacked.shape)}")
    if stacked.shape[0] == 0:
        raise ValueError(f"{name}: no layers")
    if stacked.shape[-1] != stacked.shape[-2]:
        raise ValueError(f"{name}: attention must be square (T, T)")
    return stacked.to(torch.promote_types(stacked.dtype, torch.float32))


def _check_start_layer(start_layer: int, depth: int) -> None:
    """``ValueError`` (a message for the person who chose it) unless 0 <= start_layer < depth."""
    if not 0 <= start_layer < depth:
        raise ValueError(f"Start layer {start_layer} is outside the model's {depth} layers: use 0 "
                         f"to {depth - 1}.")


def fuse_heads(attention: torch.Tensor, head_fusion: str = "mean") -> torch.Tensor:
    """One layer's heads fused into one matrix: (B, heads, T, T) -> (B, T, T)."""
    if head_fusion == "mean":
        return attention.mean(dim=1)
    if head_fusion == "max":
        return attention.amax(dim=1)
    if head_fusion == "min":
        return attention.amin(dim=1)
    raise ValueError(f"Unknown head fusion {head_fusion!r}. Choose one of: {', '.join(HEAD_FUSIONS)}.")


def discard_lowest(fused: torch.Tensor, discard_ratio: float) -> torch.Tensor:
    """Zero, per row, the lowest ``discard_ratio`` fraction of the patch-to-patch weights.

    ``fused`` is (B, T, T). Only the block ``fused[:, 1:, 1:]`` is touched: in each patch
    query's row, the ``floor(discard_ratio * N)`` smallest weights on patch keys
    (``N = T - 1``) become 0. The [CLS] row ``fused[:, 0, :]`` and the [CLS] column
    ``fused[:, :, 0]`` are never discarded. Returns a new tensor; ``fused`` is not modified.
    """
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"Discard ratio must be at least 0 and below 1, got {discard_ratio}.")
    num_patches = fused.shape[-1] - 1
    k = int(discard_ratio * num_patches)
    if k == 0:
        return fused
    patches = fused[:, 1:, 1:]  # (B, N, N): patch queries x patch keys
    lowest = patches.topk(k, dim=-1, largest=False).indices  # (B, N, k)
    kept = patches.scatter(-1, lowest, 0.0)  # (B, N, N)
    out = fused.clone()
    out[:, 1:, 1:] = kept
    return out


def _roll(layers: Iterable[torch.Tensor]) -> torch.Tensor:
    """``A_L @ ... @ A_1`` of the layers' (B, T, T) weights ``W_l``, first layer first, with
    ``A_l = norm(W_l + I)``: the residual connection as identity, each row divided by its sum."""
    rollout = None
    for w in layers:
        a = w + torch.eye(w.shape[-1], dtype=w.dtype, device=w.device)  # row sums >= 1: safe
        a = a / a.sum(dim=-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout  # (B, T, T)
    return rollout


def attention_rollout(attentions: Sequence[torch.Tensor] | torch.Tensor, head_fusion: str = "mean",
                      discard_ratio: float = 0.0, start_layer: int = 0) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020), batched: the full (B, T, T) rollout matrix.

    Per layer ``l`` from ``start_layer`` to the last: fuse the heads (``head_fusion`` mean, max
    or min), optionally discard low weights (``discard_lowest``: per row, patch-to-patch
    weights only, never the [CLS] row or column), add the identity for the residual path and
    divide each row by its sum. The rollout is ``A_L @ ... @ A_start``.

    With mean fusion and no discarding, ``norm(W + I)`` equals the paper's ``0.5 W + 0.5 I``
    because ``W`` is row-stochastic; with max/min fusion or discarding it is the common
    renormalised generalisation.

    Args:
        attentions: per-layer attention probabilities, a list of (B, heads, T, T) or one
            (L, B, heads, T, T) tensor, first layer first.
        head_fusion: "mean", "max" or "min" over heads.
        discard_ratio: fraction in [0, 1) of patch-to-patch weights to zero per row.
        start_layer: first layer taken into the product; earlier layers are skipped.
    """
    stacked = _stack_layers(attentions, "attentions")  # (L, B, heads, T, T)
    _check_start_layer(start_layer, stacked.shape[0])
    return _roll(discard_lowest(fuse_heads(attention, head_fusion), discard_ratio)
                 for attention in stacked[start_layer:])


def grad_rollout(attentions: Sequence[torch.Tensor] | torch.Tensor,
                 gradients: Sequence[torch.Tensor] | torch.Tensor,
                 start_layer: int = 0) -> torch.Tensor:
    """Class-specific, gradient-weighted rollout: the full (B, T, T) matrix.

    Per layer, the relevance of Chefer et al. 2021, ``E_h[(dy_c/dA * A)^+]`` (elementwise
    product of the attention and the gradient of the target logit with respect to it, negative
    values clamped to 0, mean over heads), then as in rollout: add the identity, divide each row
    by its sum, and multiply ``A_L @ ... @ A_start``. (Chefer et al. accumulate
    ``R <- R + A R`` without the row normalisation; normalising keeps every step
    row-stochastic, like ``attention_rollout``; for a single layer the [CLS] row differs from
    theirs only by a per-image scale.)

    Args:
        attentions: per-layer attention probabilities, list of (B, heads, T, T) or (L, B, heads, T, T).
        gradients: d(target logit)/d(attention), same shapes as ``attentions``.
        start_layer: first layer taken into the product.
    """
    attn = _stack_layers(attentions, "attentions")  # (L, B, heads, T, T)
    grad = _stack_layers(gradients, "gradients")  # (L, B, heads, T, T)
    if attn.shape != grad.shape:
        raise ValueError(f"attentions {tuple(attn.shape)} != gradients {tuple(grad.shape)}")
    _check_start_layer(start_layer, attn.shape[0])
    return _roll((a_l * g_l).clamp(min=0).mean(dim=1)  # relevance (B, T, T)
                 for a_l, g_l in zip(attn[start_layer:], grad[start_layer:]))


def cls_map(rollout: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
    """The [CLS] row over the patch tokens on the patch grid: (B, T, T) -> (B, rows, cols).

    Values are the rollout weights as they are (not rescaled); the [CLS]-to-[CLS] weight is
    left out, so a row does not sum to 1.
    """
    rows, cols = grid_size
    if rollout.ndim != 3:
        raise ValueError(f"expected a (B, T, T) rollout, got shape {tuple(rollout.shape)}")
    num_patches = rollout.shape[-1] - 1
    if num_patches != rows * cols:
        raise ValueError(f"{num_patches} patch tokens do not fill a {rows}x{cols} grid "
                         "(T - 1 must be rows * cols)")
    return rollout[:, 0, 1:].reshape(rollout.shape[0], rows, cols)  # (B, rows, cols)
