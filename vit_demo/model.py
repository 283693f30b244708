"""A Vision Transformer written from scratch (Dosovitskiy et al. 2020), torch only.

The module layout and parameter names follow timm's ``VisionTransformer`` so that a timm
state_dict of the same configuration converts onto this model (``convert_timm_state_dict``,
timm's model built with ``timm_kwargs``) and the two can be checked against each other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class ViTConfig:
    image_size: int = 32  # input height and width in pixels (square input)
    patch_size: int = 4  # side of one square patch; image_size must be a multiple
    in_chans: int = 3  # RGB
    num_classes: int = 10  # CIFAR-10
    dim: int = 192  # token width
    depth: int = 6  # number of encoder blocks
    heads: int = 3  # attention heads; dim must be a multiple
    mlp_ratio: float = 2.0  # MLP hidden width = dim * mlp_ratio
    qkv_bias: bool = True  # bias on the fused q, k, v projection (as in ViT and timm)
    pool: str = "cls"  # "cls": the [CLS] token feeds the head; "mean": mean of the patch tokens
    dropout: float = 0.0  # dropout after the position embedding, the attention projection and the MLP
    attn_dropout: float = 0.0  # dropout on the attention probabilities
    drop_path: float = 0.0  # stochastic depth rate of the last block, linear from 0 at the first
    patch_drop: float = 0.0  # fraction of patch tokens dropped per image in training (PatchDropout)
    norm_eps: float = 1e-6  # LayerNorm epsilon (timm's value)

    def __post_init__(self) -> None:
        if (self.image_size % self.patch_size or self.dim % self.heads or self.pool not in ("cls", "mean")
                or not 0.0 <= self.patch_drop < 1.0):
            raise ValueError(f"invalid ViTConfig: image_size ({self.image_size}) must be a multiple of "
                             f"patch_size ({self.patch_size}), dim ({self.dim}) a multiple of heads "
                             f"({self.heads}), pool ({self.pool!r}) 'cls' or 'mean', and patch_drop "
                             f"({self.patch_drop}) in [0, 1)")

    @property
    def grid_size(self) -> tuple[int, int]:
        """Patch grid (rows, columns)."""
        return (self.image_size // self.patch_size,) * 2


# Presets named "<data set>-<width>x<depth>/<patch>"; the ImageNet shapes keep the ViT paper's
# names ("B/16": width 768, depth 12, MLP 4x).
PRESETS: dict[str, ViTConfig] = {
    # The first shipped CIFAR-10 model: 32x32 input, 8x8 patch grid, 1.8 M parameters.
    "cifar10-192x6/4": ViTConfig(image_size=32, patch_size=4, dim=192, depth=6, heads=3, mlp_ratio=2.0),
    # The one above deepened to 9 blocks (2.7 M parameters): stages 2 to 7 of the CIFAR-10 model.
    "cifar10-192x9/4": ViTConfig(image_size=32, patch_size=4, dim=192, depth=9, heads=3, mlp_ratio=2.0),
    # The shipped CIFAR-10 model (stages 8 and 9): the 9-block one deepened to 12 blocks (3.6 M parameters).
    "cifar10-192x12/4": ViTConfig(image_size=32, patch_size=4, dim=192, depth=12, heads=3, mlp_ratio=2.0),
    # A tiny model for tests and quick CPU demos.
    "cifar10-64x2/4": ViTConfig(image_size=32, patch_size=4, dim=64, depth=2, heads=2, mlp_ratio=2.0),
    # The ImageNet shapes of the ViT paper / timm, at 224 px with a 10-class head.
    "Ti/16": ViTConfig(image_size=224, patch_size=16, dim=192, depth=12, heads=3, mlp_ratio=4.0),
    "S/16": ViTConfig(image_size=224, patch_size=16, dim=384, depth=12, heads=6, mlp_ratio=4.0),
    "B/16": ViTConfig(image_size=224, patch_size=16, dim=768, depth=12, heads=12, mlp_ratio=4.0),
}


class PatchEmbed(nn.Module):
    """Image to patch tokens: a strided convolution, the same as flatten + linear per patch."""

    def __init__(self, patch_size: int, in_chans: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, dim, rows, cols) -> (B, rows*cols, dim)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, qkv_bias: bool = True, attn_dropout: float = 0.0,
                 dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim ** -0.5
        self.attn_dropout = attn_dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_dropout)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, return_attention: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, head_dim)
        if return_attention:
            attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, heads, N, N)
            out = self.attn_drop(attn) @ v
        else:
            attn = None
            out = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.attn_dropout if self.training else 0.0)
        out = out.transpose(1, 2).reshape(B, N, C)  # (B, N, heads*head_dim)
        return self.proj_drop(self.proj(out)), attn


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


def patch_dropout(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """PatchDropout (Liu et al. 2022): in training, keep a random ``1 - rate`` of each image's patch
    tokens (in random order) and the [CLS] token in front; training gets cheaper in proportion."""
    if rate == 0.0 or not training:
        return x
    cls, patches = x[:, :1], x[:, 1:]
    B, N, C = patches.shape
    keep = torch.randn(B, N, device=x.device).argsort(dim=-1)[:, :max(1, int(N * (1.0 - rate)))]
    patches = patches.gather(1, keep.unsqueeze(-1).expand(-1, -1, C))  # (B, kept, dim)
    return torch.cat([cls, patches], dim=1)  # (B, 1+kept, dim)


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop the whole residual branch per sample, rescale the survivors."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class Block(nn.Module):
    """Pre-norm encoder block: x + MSA(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, cfg: ViTConfig, drop_path_rate: float = 0.0):
        super().__init__()
        self.drop_path_rate = drop_path_rate
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.attn = Attention(cfg.dim, cfg.heads, cfg.qkv_bias, cfg.attn_dropout, cfg.dropout)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.mlp = Mlp(cfg.dim, int(cfg.dim * cfg.mlp_ratio), cfg.dropout)

    def forward(self, x: torch.Tensor, return_attention: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        y, attn = self.attn(self.norm1(x), return_attention)
        x = x + drop_path(y, self.drop_path_rate, self.training)
        x = x + drop_path(self.mlp(self.norm2(x)), self.drop_path_rate, self.training)
        return x, attn


class ViT(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        rows, cols = cfg.grid_size
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_chans, cfg.dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + rows * cols, cfg.dim))
        self.pos_drop = nn.Dropout(cfg.dropout)
        rates = [cfg.drop_path * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList(Block(cfg, r) for r in rates)
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.head = nn.Linear(cfg.dim, cfg.num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                nn.init.trunc_normal_(m.weight, std=math.sqrt(1.0 / fan_in))
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.head.weight)

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.cfg.grid_size

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, C, H, W) to the tokens [CLS] + patches (B, 1+N, dim), before and after
        the position embeddings are added (before any dropout)."""
        patches = self.patch_embed(x)  # (B, N, dim)
        cls = self.cls_token.expand(patches.shape[0], -1, -1)  # (B, 1, dim)
        tokens = torch.cat([cls, patches], dim=1)  # (B, 1+N, dim)
        return tokens, tokens + self.pos_embed

    def forward_features(self, x: torch.Tensor, return_attention: bool = False
                         ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Images (B, C, H, W) to encoder tokens (B, 1+N, dim), before the final norm.

        With ``return_attention`` also every layer's attention probabilities, each
        (B, heads, 1+N, 1+N); token 0 is [CLS].
        """
        _, x = self.embed(x)
        x = self.pos_drop(x)  # (B, 1+N, dim)
        x = patch_dropout(x, self.cfg.patch_drop, self.training)  # (B, 1+kept, dim) in training
        attns = []
        for block in self.blocks:
            x, attn = block(x, return_attention)
            if return_attention:
                attns.append(attn)
        return x, attns

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        # LayerNorm acts per token, so norm-then-pick-[CLS] equals pick-then-norm; for mean
        # pooling this is timm's fc_norm (norm after pooling).
        pooled = x[:, 0] if self.cfg.pool == "cls" else x[:, 1:].mean(dim=1)  # (B, dim)
        return self.head(self.norm(pooled))

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        """Logits (B, classes); with ``return_attention``, (logits, [attention per layer])."""
        feats, attns = self.forward_features(x, return_attention)
        logits = self.forward_head(feats)
        return (logits, attns) if return_attention else logits


def deepen(model: ViT, depth: int) -> ViT:
    """A ``depth``-block ViT that computes exactly what ``model`` computes (Net2Net's deepening).

    The trained blocks keep their order, spread evenly; each new block has its attention and MLP
    output projections zeroed, so its residual branches add nothing until training moves them.
    """
    cfg = model.cfg
    if depth < cfg.depth:
        raise ValueError(f"cannot deepen a {cfg.depth}-block ViT to {depth} blocks")
    deeper = ViT(replace(cfg, depth=depth))
    # old block i goes to position i * depth // old depth; the positions in between are new
    old_at = {i * depth // cfg.depth: block for i, block in enumerate(model.blocks)}
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("blocks.")}
    for j, block in enumerate(deeper.blocks):
        if j in old_at:
            block.load_state_dict(old_at[j].state_dict())
        else:
            for layer in (block.attn.proj, block.mlp.fc2):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
    missing = deeper.load_state_dict(state, strict=False).missing_keys
    assert all(k.startswith("blocks.") for k in missing), missing
    return deeper


def timm_kwargs(cfg: ViTConfig) -> dict:
    """The keyword arguments of timm's ``VisionTransformer`` that build ``ViT(cfg)``'s
    architecture, regularizers included; its weights convert with ``convert_timm_state_dict``."""
    return dict(img_size=cfg.image_size, patch_size=cfg.patch_size, in_chans=cfg.in_chans,
                num_classes=cfg.num_classes, global_pool="token" if cfg.pool == "cls" else "avg",
                embed_dim=cfg.dim, depth=cfg.depth, num_heads=cfg.heads, mlp_ratio=cfg.mlp_ratio,
                qkv_bias=cfg.qkv_bias, pos_drop_rate=cfg.dropout, proj_drop_rate=cfg.dropout,
                attn_drop_rate=cfg.attn_dropout, drop_path_rate=cfg.drop_path,
                patch_drop_rate=cfg.patch_drop)


def convert_timm_state_dict(state_dict: dict[str, torch.Tensor], cfg: ViTConfig
                            ) -> dict[str, torch.Tensor]:
    """Map a timm ``VisionTransformer`` state_dict of the same configuration onto ``ViT``.

    Supports timm's default layout (class token, learned position embedding that covers the
    class token, pre-norm blocks without layer scale). timm keeps the final norm as ``norm``
    with token pooling and as ``fc_norm`` with average pooling; both become our ``norm``.
    """
    src = dict(state_dict)
    final_norm = "norm" if cfg.pool == "cls" else "fc_norm"
    out = {key: src.pop(key) for key in ("cls_token", "pos_embed", "patch_embed.proj.weight",
                                         "patch_embed.proj.bias", "head.weight", "head.bias")}
    out.update({f"norm.{part}": src.pop(f"{final_norm}.{part}") for part in ("weight", "bias")})
    blocks = [f"blocks.{i}.{name}.{part}" for i in range(cfg.depth)
              for name in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
              for part in ("weight", "bias")]
    out.update({key: src.pop(key) for key in blocks if key in src})
    if src:
        raise ValueError(f"timm weights this ViT cannot represent: {sorted(src)[:8]}")
    rows, cols = cfg.grid_size
    expected_pos = (1, 1 + rows * cols, cfg.dim)
    if tuple(out["pos_embed"].shape) != expected_pos:
        raise ValueError(f"pos_embed {tuple(out['pos_embed'].shape)} != {expected_pos}")
    return out
