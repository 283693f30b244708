"""What a ViT learned, as in Fig. 7 of the ViT paper (Dosovitskiy et al. 2020, arXiv:2010.11929).

- Patch-embedding filters: the principal components of the patch-embedding weights.
- Position-embedding similarity: the cosine similarity of every patch position's embedding
  with every other one.
- Mean attention distance: per layer and head, how far (in pixels of the model's input) a
  patch query looks, weighted by its attention.

Plain functions, torch only, for both kinds of model: both keep the patch embedding as
``patch_embed.proj`` (kernel = stride = patch size) and the position embedding as ``pos_embed``;
their grids and attention come from the model's adapter (``adapters``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .adapters import ModelKind
from .attention import forward_with_attention

COMPONENTS = 28  # as many filters as the paper's figure shows


@dataclass(frozen=True)
class FilterComponents:
    filters: torch.Tensor  # (k, C, ph, pw): the principal directions, unit length, as filters
    explained: torch.Tensor  # (k,): fraction of the filters' variance along each direction


def patch_embedding_weight(model: nn.Module) -> torch.Tensor:
    """The patch embedding's filters (dim, C, ph, pw), one per embedding channel."""
    return model.patch_embed.proj.weight.detach()


def patch_size(model: nn.Module) -> tuple[int, int]:
    """(height, width) in pixels of one patch (the embedding convolution's kernel)."""
    ph, pw = patch_embedding_weight(model).shape[-2:]
    return int(ph), int(pw)


def patch_position_embedding(model: nn.Module, grid: tuple[int, int]) -> torch.Tensor:
    """The position embeddings of the patches (rows*cols, dim), row by row, without [CLS]'s:
    ``pos_embed`` may be (1, 1+N, dim), [CLS] first (our ``ViT``, timm's default), or (1, N, dim)
    (timm's ``no_embed_class``)."""
    pos = model.pos_embed.detach()[0]  # (1+N or N, dim)
    n = grid[0] * grid[1]
    if pos.shape[0] not in (n, n + 1):
        raise ValueError(f"pos_embed has {pos.shape[0]} positions, not {n} patches (+ [CLS])")
    return pos[-n:]  # (N, dim)


def principal_components(rows: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``k`` (at most all) principal directions of ``rows`` (n, d), centred on their
    mean, as unit vectors (k, d) float64, and the fraction of the variance along each (k,); a
    direction's arbitrary sign is fixed so that its largest-magnitude value is positive."""
    rows = rows.detach().double()
    centred = rows - rows.mean(dim=0, keepdim=True)
    _, s, vt = torch.linalg.svd(centred, full_matrices=False)  # vt: (r, d), s descending
    k = min(k, vt.shape[0])
    top = vt[:k]  # (k, d)
    peak = top.gather(1, top.abs().argmax(dim=1, keepdim=True))  # (k, 1)
    top = top * torch.where(peak < 0, -1.0, 1.0)
    variance = s**2
    return top, variance[:k] / variance.sum().clamp_min(1e-300)


def filter_components(weight: torch.Tensor, k: int = COMPONENTS) -> FilterComponents:
    """The first ``k`` (at most C*ph*pw) principal components of the ``dim`` filters ``weight``
    (dim, C, ph, pw), each flattened and centred on the mean filter (``principal_components``)."""
    top, explained = principal_components(weight.flatten(1), k)  # (k, C*ph*pw), (k,)
    return FilterComponents(top.reshape(len(top), *weight.shape[1:]).float(), explained.float())


def position_similarity(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Cosine similarity of every patch's position embedding ``pos`` (rows*cols, dim, row by row)
    with every other one: (rows, cols, rows, cols), entry [r, c] the map of position (r, c)'s."""
    unit = torch.nn.functional.normalize(pos.detach().double(), dim=-1)  # (N, dim)
    return (unit @ unit.T).float().reshape(*grid, *grid)


def patch_distances(grid: tuple[int, int], patch: tuple[int, int]) -> torch.Tensor:
    """Euclidean distance in pixels between the centres of every two patches: (N, N), row by row."""
    cells = torch.cartesian_prod(torch.arange(grid[0]), torch.arange(grid[1]))  # (N, 2): row, col
    centres = (cells * torch.tensor(patch)).double()  # (N, 2)
    return torch.cdist(centres, centres)  # (N, N)


def mean_attention_distance(attentions: list[torch.Tensor] | tuple[torch.Tensor, ...],
                            grid: tuple[int, int], patch: tuple[int, int]) -> torch.Tensor:
    """Mean attention distance in pixels per layer and head: (layers, heads), over the B images
    and N queries of ``attentions`` (per layer (B, heads, 1+N, 1+N), token 0 = [CLS], rows =
    queries). [CLS] is left out as query and as key: each patch query's attention over the patch
    keys is renormalised to sum to 1, then the distance to each key is weighted by it."""
    dist = patch_distances(grid, patch)  # (N, N)
    out = []
    for attn in attentions:
        patches = attn[:, :, 1:, 1:].double()  # (B, heads, N, N)
        patches = patches / patches.sum(dim=-1, keepdim=True)
        per_query = (patches * dist).sum(dim=-1)  # (B, heads, N)
        out.append(per_query.mean(dim=(0, 2)))  # (heads,)
    return torch.stack(out).float()  # (layers, heads)


def uniform_attention_distance(grid: tuple[int, int], patch: tuple[int, int]) -> float:
    """The mean attention distance of a head that attends to every patch equally (pixels)."""
    return float(patch_distances(grid, patch).mean())


def attention_distance_over(model: nn.Module, kind: ModelKind | str, x: torch.Tensor,
                            batch_size: int = 8) -> torch.Tensor:
    """Mean attention distance (layers, heads) of ``model`` over the preprocessed images ``x``
    (B, C, H, W), in batches of ``batch_size`` (every layer's attention of a batch is held at
    once: layers x batch x heads x T^2 floats)."""
    total = 0.0
    with torch.inference_mode():
        for batch in x.split(batch_size):
            _, attentions, grid = forward_with_attention(model, kind, batch)
            total = total + mean_attention_distance(attentions, grid, patch_size(model)) * len(batch)
    return total / len(x)  # (layers, heads)


def rounded(values: torch.Tensor, digits: int = 4) -> list:
    """``values`` as nested lists of floats rounded to ``digits`` decimal places (for JSON)."""
    return values.double().numpy().round(digits).tolist()


def _mean(values: torch.Tensor) -> float | None:
    return float(values.mean()) if values.numel() else None


def similarity_by_grid_distance(similarity: torch.Tensor) -> dict[str, float | None]:
    """How much the position embedding looks like the 2-D grid: the mean cosine similarity of
    pairs of distinct positions that are grid neighbours (4-neighbourhood), in the same row or
    column but further apart, and neither; and the correlation of similarity with grid distance
    over all pairs (near -1: the nearer, the more alike). None where a grid has no such pair."""
    rows, cols = similarity.shape[:2]
    sim = similarity.double().reshape(rows * cols, rows * cols)
    r, c = torch.cartesian_prod(torch.arange(rows), torch.arange(cols)).T  # each (N,), row by row
    dr, dc = (r[:, None] - r[None]).abs(), (c[:, None] - c[None]).abs()
    distinct = (dr + dc) > 0
    neighbour = (dr + dc) == 1
    line = distinct & ~neighbour & ((dr == 0) | (dc == 0))
    other = distinct & (dr > 0) & (dc > 0)
    grid_dist = torch.sqrt((dr**2 + dc**2).double())[distinct]
    corr = torch.corrcoef(torch.stack([sim[distinct], grid_dist]))[0, 1]
    return {"neighbours": _mean(sim[neighbour]), "same_row_or_column": _mean(sim[line]),
            "others": _mean(sim[other]), "correlation_with_grid_distance": float(corr)}
