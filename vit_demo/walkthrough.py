"""The forward pass of a ViT on one image, step by step, from one traced pass (``adapters``).

1. Patches: the input as the model gets it and its patch grid.
2. Tokens: every patch embedding's first three principal components (an RGB colour per patch),
   before and after the position embeddings are added; [CLS] on the same axes.
3. Blocks: per block the [CLS] token's attention over the patches (heads averaged), and the
   logit lens: the class probabilities the model's final norm and head read from the [CLS]
   token after that block (nostalgebraist 2020, "interpreting GPT: the logit lens").
4. Answer: the model's class probabilities, the lens of its last block.

Plain tensor functions (torch only), for both kinds of model; the model must be in eval mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .adapters import ModelAdapter, ModelKind, adapter_for
from .inside import patch_size, principal_components, rounded
from .overlay import value_grid
from .rollout import cls_map, fuse_heads

COMPONENTS = 3  # one per colour channel


@dataclass(frozen=True)
class TokenPCA:
    """The tokens (1+N, dim) of one image on the first principal axes of its patch tokens."""
    scores: torch.Tensor  # (1+N, 3) each token's coordinates on the axes; row 0 is [CLS]
    explained: torch.Tensor  # (3,) fraction of the patch tokens' variance along each axis

    def colours(self) -> torch.Tensor:
        """(1+N, 3) RGB in [0, 1]: each axis scaled so that the patches span [0, 1] ([CLS]
        clipped to it); patches the model embeds alike get alike colours."""
        patches = self.scores[1:]  # (N, 3)
        low, high = patches.amin(dim=0), patches.amax(dim=0)
        return ((self.scores - low) / (high - low).clamp_min(1e-12)).clamp(0.0, 1.0)

    def to_json(self, grid: tuple[int, int]) -> dict:
        colours = self.colours()
        return {"rgb": rounded(colours[1:].reshape(*grid, 3), 3), "cls_rgb": rounded(colours[0], 3),
                "explained_variance": rounded(self.explained)}


@dataclass(frozen=True)
class Walkthrough:
    grid: tuple[int, int]  # (rows, cols) of patches
    patch: tuple[int, int]  # (height, width) of a patch in input pixels
    tokens: TokenPCA  # [CLS] and the patch embeddings, before the position embeddings
    embedded: TokenPCA  # the same tokens after the position embeddings are added
    attention: torch.Tensor  # (blocks, rows, cols) [CLS] attention over the patches, heads averaged
    lens: torch.Tensor  # (blocks, classes) class probabilities read from [CLS] after each block
    probabilities: torch.Tensor  # (classes,) the model's answer

    def to_json(self, classes: tuple[str, ...] | list[str]) -> dict:
        """The numbers of every step, plain lists; the lens and probabilities in ``classes``'
        order, the attention with 4 significant digits."""
        return {"classes": list(classes), "grid_size": list(self.grid),
                "patch_size": list(self.patch),
                "token_pca": {"patch_embeddings": self.tokens.to_json(self.grid),
                              "with_position_embeddings": self.embedded.to_json(self.grid)},
                "attention": [value_grid(block) for block in self.attention],
                "lens": rounded(self.lens), "settled_block": int(settled_block(self.lens[None])[0]) + 1,
                "probabilities": rounded(self.probabilities), "top5": top_k(self.probabilities, classes)}


def token_pca(tokens: torch.Tensor, k: int = COMPONENTS) -> TokenPCA:
    """The tokens (1+N, dim) of one image, [CLS] first, projected on the first ``k`` principal
    directions of its N patch tokens (centred on their mean)."""
    patches = tokens[1:].detach().double()  # (N, dim)
    directions, explained = principal_components(patches, k)  # (k, dim), (k,)
    scores = (tokens.detach().double() - patches.mean(dim=0)) @ directions.T  # (1+N, k)
    return TokenPCA(scores.float(), explained.float())


def cls_attention(attentions: list[torch.Tensor], grid: tuple[int, int]) -> torch.Tensor:
    """Per block the [CLS] row of the heads' mean attention over the patches: a list of
    (B, heads, 1+N, 1+N) to (B, blocks, rows, cols)."""
    return torch.stack([cls_map(fuse_heads(a, "mean"), grid) for a in attentions], dim=1)


def logit_lens(adapter: ModelAdapter, model: nn.Module, blocks: list[torch.Tensor]) -> torch.Tensor:
    """Class probabilities (B, blocks, classes) that ``model``'s final norm and head
    (``adapter.read_out``) give for the [CLS] token after each block; the blocks' outputs are
    each (B, 1+N, dim)."""
    cls = torch.stack([b[:, :1] for b in blocks], dim=1)  # (B, blocks, 1, dim)
    logits = adapter.read_out(model, cls.flatten(0, 1))  # (B*blocks, classes)
    return logits.reshape(*cls.shape[:2], -1).float().softmax(dim=-1)  # (B, blocks, classes)


def walkthrough(model: nn.Module, kind: ModelKind | str, x: torch.Tensor) -> Walkthrough:
    """The steps of ``model``'s forward pass on one preprocessed image ``x`` (1, C, H, W), from
    one traced pass with the attention; all tensors detached."""
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"expected one image (1, C, H, W), got shape {tuple(x.shape)}")
    adapter = adapter_for(kind)
    with torch.inference_mode():
        trace = adapter.forward_trace(model, x)
        grid = adapter.patch_grid(model, x)
        lens = logit_lens(adapter, model, trace.blocks)
        return Walkthrough(grid, patch_size(model), token_pca(trace.tokens[0]),
                           token_pca(trace.embedded[0]), cls_attention(trace.attentions, grid)[0],
                           lens[0], trace.logits[0].float().softmax(dim=-1))


def top_k(probabilities: torch.Tensor, classes: tuple[str, ...] | list[str], k: int = 5
          ) -> dict[str, float]:
    """The ``k`` most probable classes of ``probabilities`` (classes,), highest first."""
    top = probabilities.topk(min(k, len(probabilities)))
    return {classes[i]: float(p) for p, i in zip(top.values, top.indices)}


def settled_block(lens: torch.Tensor) -> torch.Tensor:
    """Per image the first block (0-based) from which the lens's top-1 stays the final one:
    (B, blocks, classes) to (B,) long."""
    top = lens.argmax(dim=-1)  # (B, blocks)
    agrees = top == top[:, -1:]  # (B, blocks)
    # the blocks from the last disagreement on: a suffix of True, counted from the end
    suffix = agrees.flip(1).long().cumprod(dim=1).sum(dim=1)  # (B,)
    return lens.shape[1] - suffix


def lens_agreement(lens: torch.Tensor, labels: torch.Tensor) -> dict[str, list[float] | float]:
    """How the logit lens of many images (B, blocks, classes), true classes ``labels`` (B,),
    arrives at the answer, per block (from the first): the fraction of images whose lens top-1
    is already the final answer (``agrees``) and stays it to the end (``settled``), the
    fraction whose lens top-1 is the true class (``accuracy``), the mean probability the lens
    gives the final answer (``final_probability``); and the mean block (from 1) from which the
    top-1 stays the final answer (``mean_settled_block``)."""
    top = lens.argmax(dim=-1)  # (B, blocks)
    final = top[:, -1]  # (B,)
    settled = settled_block(lens)  # (B,) from 0
    blocks = torch.arange(lens.shape[1])
    return {"agrees": (top == final[:, None]).double().mean(dim=0).tolist(),
            "settled": (settled[:, None] <= blocks).double().mean(dim=0).tolist(),
            "accuracy": (top == labels[:, None]).double().mean(dim=0).tolist(),
            "final_probability": lens.gather(2, final[:, None, None].expand(-1, lens.shape[1], 1))
                                     .squeeze(2).double().mean(dim=0).tolist(),
            "mean_settled_block": float(settled.double().mean()) + 1.0}
