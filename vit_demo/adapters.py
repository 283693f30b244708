"""The model interface: everything that differs between the two kinds of model the app shows.

``adapter_for(kind)`` is the ``ModelAdapter`` of a ``ModelKind``, the one place that knows how
a model of that kind is built from its card, how many blocks and heads it has, which patch grid
it makes of an input, and how its attention probabilities are captured: our ``ViT`` through its
``return_attention`` path; timm's ``VisionTransformer`` run through its own submodules with the
softmax attention written out (``timm_forward_with_attention``); and how one forward pass is
traced step by step (``forward_trace``: the tokens before and after the position embeddings,
every block's output and attention) and how the final norm and head read a class from [CLS]
(``read_out``).

Capturing attention changes no module and no global state; the model must be in eval mode
(checked, not changed).
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import torch
import torch.nn as nn

from .card import ModelCard, ModelKind
from .model import ViT


class ForwardTrace(NamedTuple):
    """One forward pass, step by step (token 0 = [CLS] throughout)."""
    tokens: torch.Tensor  # (B, 1+N, dim) [CLS] and the patch embeddings, before position embeddings
    embedded: torch.Tensor  # (B, 1+N, dim) the first block's input: position embeddings added
    blocks: list[torch.Tensor]  # per block its output tokens (B, 1+N, dim), before the final norm
    attentions: list[torch.Tensor]  # per block its attention probabilities (B, heads, 1+N, 1+N)
    logits: torch.Tensor  # (B, classes)


class ModelAdapter(Protocol):
    kind: ModelKind
    finetunable: bool  # a checkpoint of this kind can be the fine-tune tab's base

    def build(self, card: ModelCard) -> nn.Module: ...  # untrained, as the card describes it
    def depth_and_heads(self, model: nn.Module) -> tuple[int, int]: ...  # blocks, heads per block
    def embedding_grid(self, model: nn.Module) -> tuple[int, int]: ...  # the pos_embed's grid
    def patch_grid(self, model: nn.Module, x: torch.Tensor) -> tuple[int, int]: ...  # of images x

    def forward_with_attention(self, model: nn.Module, x: torch.Tensor
                               ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits (B, classes) and each block's attention probabilities (B, heads, T, T),
        token 0 = [CLS], under the caller's grad mode; ``ValueError`` for a model it cannot
        explain."""

    def forward_trace(self, model: nn.Module, x: torch.Tensor) -> ForwardTrace:
        """The forward pass of images ``x`` step by step, with the attention; its logits are
        ``read_out`` of the last block's tokens. ``ValueError`` as ``forward_with_attention``."""

    def read_out(self, model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (B, classes) that the model's final norm and head give for the [CLS] token of
        ``tokens`` (B, T, dim), token 0 = [CLS]."""


def _check_eval(model: nn.Module) -> None:
    if model.training:
        raise ValueError("the model is in training mode; call model.eval() before collecting attention")


class ScratchAdapter:
    kind = ModelKind.SCRATCH
    finetunable = True

    def build(self, card: ModelCard) -> nn.Module:
        return ViT(card.model_config)

    def depth_and_heads(self, model: nn.Module) -> tuple[int, int]:
        return model.cfg.depth, model.cfg.heads

    def embedding_grid(self, model: nn.Module) -> tuple[int, int]:
        return tuple(model.grid_size)

    def patch_grid(self, model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
        return tuple(model.grid_size)

    def forward_with_attention(self, model: nn.Module, x: torch.Tensor
                               ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        self._check(model)
        return model(x, return_attention=True)

    def forward_trace(self, model: nn.Module, x: torch.Tensor) -> ForwardTrace:
        self._check(model)
        tokens, x = model.embed(x)  # each (B, 1+N, dim); dropout is off in eval
        embedded, blocks, attentions = x, [], []
        for block in model.blocks:
            x, attn = block(x, return_attention=True)
            blocks.append(x)
            attentions.append(attn)
        return ForwardTrace(tokens, embedded, blocks, attentions, self.read_out(model, x))

    def read_out(self, model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        return model.forward_head(tokens)

    @staticmethod
    def _check(model: nn.Module) -> None:
        if not isinstance(model, ViT):
            raise ValueError(f"expected vit_demo.model.ViT for kind 'scratch', got {type(model).__name__}")
        if model.cfg.pool != "cls":
            raise ValueError(f"this ViT pools with pool={model.cfg.pool!r}; a [CLS] map explains the "
                             "prediction only with pool='cls'")
        _check_eval(model)


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


def timm_forward_with_attention(model: nn.Module, x: torch.Tensor
                                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``ModelAdapter.forward_with_attention`` of a timm ``VisionTransformer`` (see
    ``timm_forward_trace``). Under grad the returned attentions are part of the graph, so
    d(logit)/d(attention) can be taken."""
    trace = timm_forward_trace(model, x)
    return trace.logits, trace.attentions


def timm_read_out(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``ModelAdapter.read_out`` of a timm ``VisionTransformer``: its final norm, then its head."""
    return model.forward_head(model.norm(tokens))


def timm_forward_trace(model: nn.Module, x: torch.Tensor) -> ForwardTrace:
    """``ModelAdapter.forward_trace`` of a timm ``VisionTransformer``.

    Follows ``VisionTransformer.forward_features`` / ``forward_head`` and ``Block.forward`` /
    ``Attention.forward`` (timm 1.0) step by step, with the softmax attention written out where
    timm would call ``scaled_dot_product_attention``. The logits equal ``model(x)`` (fused or
    not) up to float rounding.
    """
    check_timm_supported(model)
    _check_eval(model)
    patches = model.patch_embed(x)  # (B, N, dim), or (B, rows, cols, dim) with dynamic_img_size
    tokens = torch.cat([model.cls_token.expand(x.shape[0], -1, -1),
                        patches.flatten(1, -2)], dim=1)  # (B, 1+N, dim)
    x = model._pos_embed(patches)  # (B, 1+N, dim)
    x = model.patch_drop(x)
    x = model.norm_pre(x)
    embedded, blocks, attentions = x, [], []
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
        blocks.append(x)
    return ForwardTrace(tokens, embedded, blocks, attentions, timm_read_out(model, x))


class TimmAdapter:
    kind = ModelKind.TIMM
    finetunable = False  # the tab fine-tunes ViT-B/16 from the hub, not a saved checkpoint

    def build(self, card: ModelCard) -> nn.Module:
        import timm

        return timm.create_model(card.timm_name, pretrained=False, num_classes=len(card.classes))

    def depth_and_heads(self, model: nn.Module) -> tuple[int, int]:
        return len(model.blocks), model.blocks[0].attn.num_heads

    def embedding_grid(self, model: nn.Module) -> tuple[int, int]:
        return tuple(model.patch_embed.grid_size)

    def patch_grid(self, model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
        if model.dynamic_img_size:
            return tuple(model.patch_embed.dynamic_feat_size(tuple(x.shape[-2:])))
        return tuple(model.patch_embed.grid_size)

    forward_with_attention = staticmethod(timm_forward_with_attention)
    forward_trace = staticmethod(timm_forward_trace)
    read_out = staticmethod(timm_read_out)


ADAPTERS: dict[ModelKind, ModelAdapter] = {a.kind: a for a in (ScratchAdapter(), TimmAdapter())}


def adapter_for(kind: ModelKind | str) -> ModelAdapter:
    """The adapter of ``kind`` (a ``ModelKind`` or its value); ``ValueError`` for another."""
    try:
        return ADAPTERS[ModelKind(kind)]
    except ValueError:
        raise ValueError(f"kind must be one of {', '.join(repr(k.value) for k in ModelKind)}, "
                         f"got {kind!r}") from None
