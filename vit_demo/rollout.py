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

_FUSIONS = {"mean": torch.mean, "max": torch.amax, "min": torch.amin}  # over the heads (dim 1)
HEAD_FUSIONS = tuple(_FUSIONS)


def _stack_layers(attentions: Sequence[torch.Tensor] | torch.Tensor, name: str) -> torch.Tensor:
    """Layers as one floating tensor (L, B, heads, T, T), at least float32."""
    if len(attentions) == 0:
        raise ValueError(f"{name}: no layers")
    stacked = attentions if isinstance(attentions, torch.Tensor) else torch.stack(list(attentions))
    if stacked.ndim != 5 or stacked.shape[-1] != stacked.shape[-2]:
        raise ValueError(f"{name}: expected a list of (B, heads, T, T) tensors or one "
                         f"(L, B, heads, T, T) tensor, got shape {tuple(stacked.shape)}")
    return stacked.to(torch.promote_types(stacked.dtype, torch.float32))


def check_index(name: str, index: int, count: int, unit: str, lowest: int = 0,
                hint: str = "") -> None:
    """``ValueError`` (a message for the person who chose it) unless lowest <= index < count."""
    if not lowest <= index < count:
        raise ValueError(f"{name} {index} is outside the model's {count} {unit}: use 0 to "
                         f"{count - 1}{hint}.")


def check_head_fusion(head_fusion: str) -> None:
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"Unknown head fusion {head_fusion!r}. "
                         f"Choose one of: {', '.join(HEAD_FUSIONS)}.")


def fuse_heads(attention: torch.Tensor, head_fusion: str = "mean") -> torch.Tensor:
    """One layer's heads fused into one matrix: (B, heads, T, T) -> (B, T, T)."""
    check_head_fusion(head_fusion)
    return _FUSIONS[head_fusion](attention, dim=1)


def discard_lowest(fused: torch.Tensor, discard_ratio: float) -> torch.Tensor:
    """Zero, per row, the lowest ``discard_ratio`` fraction of the patch-to-patch weights of
    ``fused`` (B, T, T): in each patch query's row, the ``floor(discard_ratio * (T - 1))``
    smallest weights on patch keys; the [CLS] row and column never. ``fused`` is not modified.
    """
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"Discard ratio must be at least 0 and below 1, got {discard_ratio}.")
    k = int(discard_ratio * (fused.shape[-1] - 1))  # of the T - 1 patch keys
    if k == 0:
        return fused
    patches = fused[:, 1:, 1:]  # (B, N, N): patch queries x patch keys
    lowest = patches.topk(k, dim=-1, largest=False).indices  # (B, N, k)
    out = fused.clone()
    out[:, 1:, 1:] = patches.scatter(-1, lowest, 0.0)  # (B, N, N)
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
    """Attention rollout (Abnar & Zuidema 2020), batched: the full (B, T, T) rollout matrix of
    ``attentions`` (per layer (B, heads, T, T), or one (L, B, heads, T, T); first layer first).

    Per layer from ``start_layer`` (earlier ones are skipped) to the last: fuse the heads
    (``head_fusion``), zero the lowest ``discard_ratio`` (in [0, 1)) of the patch-to-patch
    weights per row (``discard_lowest``), add the identity for the residual path and divide
    each row by its sum. The rollout is ``A_L @ ... @ A_start``.

    With mean fusion and no discarding, ``norm(W + I)`` equals the paper's ``0.5 W + 0.5 I``
    because ``W`` is row-stochastic; with max/min fusion or discarding it is the common
    renormalised generalisation.
    """
    stacked = _stack_layers(attentions, "attentions")  # (L, B, heads, T, T)
    check_index("Start layer", start_layer, stacked.shape[0], "layers")
    return _roll(discard_lowest(fuse_heads(attention, head_fusion), discard_ratio)
                 for attention in stacked[start_layer:])


def grad_rollout(attentions: Sequence[torch.Tensor] | torch.Tensor,
                 gradients: Sequence[torch.Tensor] | torch.Tensor,
                 start_layer: int = 0) -> torch.Tensor:
    """Class-specific, gradient-weighted rollout: the full (B, T, T) matrix, from the
    ``attentions`` (as in ``attention_rollout``) and their ``gradients`` d(target logit)/d(A).

    Per layer, the relevance of Chefer et al. 2021, ``E_h[(dy_c/dA * A)^+]`` (elementwise
    product of the attention and the gradient of the target logit with respect to it, negative
    values clamped to 0, mean over heads), then as in rollout: add the identity, divide each row
    by its sum, and multiply ``A_L @ ... @ A_start``. (Chefer et al. accumulate
    ``R <- R + A R`` without the row normalisation; normalising keeps every step
    row-stochastic, like ``attention_rollout``; for a single layer the [CLS] row differs from
    theirs only by a per-image scale.)
    """
    attn = _stack_layers(attentions, "attentions")  # (L, B, heads, T, T)
    grad = _stack_layers(gradients, "gradients")  # (L, B, heads, T, T)
    if attn.shape != grad.shape:
        raise ValueError(f"attentions {tuple(attn.shape)} != gradients {tuple(grad.shape)}")
    check_index("Start layer", start_layer, attn.shape[0], "layers")
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
