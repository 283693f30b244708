"""CIFAR-10 as uint8 tensors, a fixed train/validation split, and batch-at-a-time augmentation.

Sources, in order: ``cifar10_{train,test}.npz`` in the data directory (``--data-dir`` or
``VIT_DEMO_DATA_DIR``; arrays ``x`` uint8 [N,32,32,3] and ``y`` int64 [N]), then torchvision's
CIFAR-10 archive in that directory or in the download cache, downloading it when allowed.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from .notices import Explained

CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
           "dog", "frog", "horse", "ship", "truck")
DATA_DIR_ENV = "VIT_DEMO_DATA_DIR"
VAL_SIZE = 5000  # held out of the 50k training images, fixed by SPLIT_SEED
SPLIT_SEED = 0


NO_DATA = "CIFAR-10 is not on this server"  # what a visitor is told, whatever the cause


class DataUnavailable(Explained, RuntimeError):
    """CIFAR-10 could not be found locally nor downloaded; the message says how to get it (for
    the operator), ``visitor`` only that it is not there."""

    def __init__(self, operator: str):
        super().__init__(operator, NO_DATA)


def download_root() -> Path:
    """Where torchvision's CIFAR-10 archive is cached on users' machines."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vit-demo" / "cifar10"


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    value = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV)
    return Path(value).expanduser() if value else None


@dataclass(frozen=True)
class Split:
    x: torch.Tensor  # uint8 (N, 32, 32, 3), RGB, HWC as stored
    y: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, index: torch.Tensor) -> "Split":
        return Split(self.x[index], self.y[index])


def load_cifar10(split: str, data_dir: str | os.PathLike | None = None,
                 download: bool = True) -> Split:
    """The ``"train"`` (50k) or ``"test"`` (10k) split of CIFAR-10 as uint8 tensors."""
    if split not in ("train", "test"):
        raise ValueError(f"unknown CIFAR-10 split {split!r}: use 'train' or 'test'")
    root = resolve_data_dir(data_dir)
    if root is not None:
        npz = root / f"cifar10_{split}.npz"
        if npz.is_file():
            with np.load(npz, allow_pickle=False) as arrays:
                return _checked(torch.from_numpy(arrays["x"]), torch.from_numpy(arrays["y"]), npz)
    tv_root = root if root is not None else download_root()
    try:
        from torchvision.datasets import CIFAR10
        dataset = CIFAR10(str(tv_root), train=split == "train", download=download)
    except Exception as exc:  # no archive, no network, bad checksum: all say the same to a user
        raise DataUnavailable(_unavailable(split, root, download)) from exc
    return _checked(torch.from_numpy(dataset.data), torch.tensor(dataset.targets), tv_root)


def _unavailable(split: str, root: Path | None, download: bool) -> str:
    """Why ``split`` cannot be had, and how to get it; names no server path."""
    where = "the data directory" if root is not None else f"${DATA_DIR_ENV} (unset)"
    return (f"CIFAR-10 ({split}) is not available: no cifar10_{split}.npz in {where}, and "
            f"torchvision's CIFAR-10 archive could not be {'downloaded' if download else 'found'}. "
            f"Set {DATA_DIR_ENV} to a folder with the arrays, or start the app with "
            "VIT_DEMO_DOWNLOAD_DATA=1 (scripts/start.sh does) and network access.")


def data_problem(split: str, data_dir: str | os.PathLike | None = None) -> str:
    """Empty when ``split`` is on this machine (arrays or torchvision's archive), else why not;
    a cheap check that reads no data."""
    root = resolve_data_dir(data_dir)
    if root is not None and (root / f"cifar10_{split}.npz").is_file():
        return ""
    if ((root if root is not None else download_root()) / "cifar-10-batches-py").is_dir():
        return ""
    return _unavailable(split, root, download=False)


def _checked(x: torch.Tensor, y: torch.Tensor, where) -> Split:
    if x.dtype != torch.uint8 or x.ndim != 4 or tuple(x.shape[1:]) != (32, 32, 3) or len(x) != len(y):
        raise DataUnavailable(f"{where}: expected uint8 [N,32,32,3] images and N labels, got "
                              f"{x.dtype} {tuple(x.shape)} and {tuple(y.shape)}")
    return Split(x.contiguous(), y.long())


def train_val_split(train: Split, val_size: int = VAL_SIZE, seed: int = SPLIT_SEED
                    ) -> tuple[Split, Split]:
    """The fixed 45k/5k split of the official training set."""
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    return train.subset(perm[val_size:]), train.subset(perm[:val_size])


def class_balanced_indices(y: torch.Tensor, per_class: int) -> torch.Tensor:
    """The first ``per_class`` indices of every class, in class order."""
    return torch.cat([torch.nonzero(y == c).flatten()[:per_class] for c in range(len(CLASSES))])


def crop_flip_draws(batch: int, generator: torch.Generator, pad: int = 4
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The random numbers of ``random_crop_flip``, in its order, on the CPU: row and column
    offsets (B,) each in [0, 2*pad] into the padded image, then horizontal-flip flags (B,) bool."""
    dy = torch.randint(0, 2 * pad + 1, (batch,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (batch,), generator=generator)
    flip = torch.rand(batch, generator=generator) < 0.5
    return dy, dx, flip


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop after reflect padding, and random horizontal flip, for a whole batch at once.

    x: uint8 or float (B, H, W, C) on any device; the random numbers are ``crop_flip_draws`` (on
    the CPU), so the result depends on the generator alone, not on the device.
    """
    B, H, W, _ = x.shape
    padded = F.pad(x.permute(0, 3, 1, 2).float(), (pad, pad, pad, pad), mode="reflect")
    padded = padded.permute(0, 2, 3, 1)  # (B, H+2p, W+2p, C)
    dy, dx, flip = (t.to(x.device) for t in crop_flip_draws(B, generator, pad))
    rows = dy[:, None] + torch.arange(H, device=x.device)  # (B, H)
    cols = dx[:, None] + torch.arange(W, device=x.device)  # (B, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    b = torch.arange(B, device=x.device)[:, None, None]
    return padded[b, rows[:, :, None], cols[:, None, :]].to(x.dtype)  # (B, H, W, C)


def resized_crop_flip_draws(batch: int, generator: torch.Generator,
                            scale: tuple[float, float] = (0.35, 1.0),
                            ratio: tuple[float, float] = (3 / 4, 4 / 3)
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The random numbers of ``random_resized_crop_flip``, in its order, on the CPU: crop width
    and height as fractions (B,) each in (0, 1] (area uniform in ``scale``, aspect ratio
    log-uniform in ``ratio``, each side clipped to the image); the left and top edges as
    fractions (B,) each, uniform over the positions inside; horizontal-flip flags (B,) bool."""
    area = torch.empty(batch).uniform_(*scale, generator=generator)
    log_ratio = torch.empty(batch).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    w = (area * log_ratio.exp()).sqrt().clamp(max=1.0)
    h = (area / log_ratio.exp()).sqrt().clamp(max=1.0)
    left = torch.rand(batch, generator=generator) * (1 - w)
    top = torch.rand(batch, generator=generator) * (1 - h)
    flip = torch.rand(batch, generator=generator) < 0.5
    return w, h, left, top, flip


def random_resized_crop_flip(x: torch.Tensor, generator: torch.Generator,
                             scale: tuple[float, float] = (0.35, 1.0),
                             ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """A random crop of each image scaled back to the image's size (bilinear), and a random
    horizontal flip, for a whole batch in one ``grid_sample``: teaches the model objects that
    are off-centre, partly cut off or larger than CIFAR frames them, as in photos.

    x: uint8 or float (B, H, W, C) on any device; the crops are ``resized_crop_flip_draws``
    from ``generator`` (on the CPU), so the result depends on the generator alone.
    """
    B = len(x)
    w, h, left, top, flip = (t.to(x.device) for t in resized_crop_flip_draws(B, generator, scale, ratio))
    # Output pixel u in [-1, 1] (align_corners=False) reads input (2*left + w*(u + 1)) - 1.
    theta = torch.zeros(B, 2, 3, device=x.device)
    theta[:, 0, 0] = torch.where(flip, -w, w)
    theta[:, 0, 2] = 2 * left + w - 1
    theta[:, 1, 1] = h
    theta[:, 1, 2] = 2 * top + h - 1
    images = x.permute(0, 3, 1, 2).float()  # (B, C, H, W)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)  # (B, H, W, 2)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    out = out.permute(0, 2, 3, 1)  # (B, H, W, C)
    return out.round().clamp(0, 255).to(x.dtype) if x.dtype == torch.uint8 else out


Policy = Literal["none", "autoaugment", "randaugment", "trivialaugment"]
POLICIES: dict[str, v2.Transform] = {  # torchvision's image policies, by the name a recipe gives
    "autoaugment": v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10),  # Cubuk et al. 2019, CIFAR-10 policy
    "randaugment": v2.RandAugment(),  # Cubuk et al. 2020: 2 ops, magnitude 9 of 31
    "trivialaugment": v2.TrivialAugmentWide(),  # Muller & Hutter 2021: 1 op, random magnitude
}


def augment_policy(x: torch.Tensor, generator: torch.Generator, policy: Policy) -> torch.Tensor:
    """torchvision's ``policy`` drawn for each image of a uint8 (B, H, W, C) batch on its own.

    torchvision draws from torch's global generator; here it draws inside ``fork_rng`` from a
    seed taken from ``generator``, so the result depends on ``generator`` alone.
    """
    if policy == "none":
        return x
    transform = POLICIES[policy]
    seed = int(torch.randint(2 ** 62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        images = x.permute(0, 3, 1, 2).cpu()  # (B, C, H, W), as torchvision takes them
        out = torch.stack([transform(image) for image in images])
    return out.permute(0, 2, 3, 1).to(x.device)  # (B, H, W, C)


@dataclass(frozen=True)
class Mix:
    """How a batch was mixed: image i is ``lam`` of image i and ``1 - lam`` of image ``perm[i]``
    (blended by mixup, or a pasted box by cutmix), so its target is the same mixture of labels."""
    perm: torch.Tensor  # (B,) partner of each image
    lam: float  # weight of the image's own label


def mix_batch(x: torch.Tensor, generator: torch.Generator, mixup: float = 0.0,
              cutmix: float = 0.0) -> tuple[torch.Tensor, Mix]:
    """Mixup (alpha ``mixup``) or cutmix (alpha ``cutmix``) of a whole float (B, C, H, W) batch
    with a permutation of itself; with both on, each batch draws one of them at even odds.

    lam ~ Beta(alpha, alpha); cutmix pastes a box of area (1 - lam) * H * W centred uniformly
    (clipped at the borders) and returns lam corrected to the box actually pasted.
    """
    assert mixup > 0 or cutmix > 0, "mix_batch needs mixup or cutmix"
    B, _, H, W = x.shape
    perm = torch.randperm(B, generator=generator).to(x.device)
    use_cutmix = cutmix > 0 and (mixup == 0 or bool(torch.rand(1, generator=generator) < 0.5))
    alpha = cutmix if use_cutmix else mixup
    seed = int(torch.randint(2 ** 62, (1,), generator=generator))
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    if not use_cutmix:
        return lam * x + (1 - lam) * x[perm], Mix(perm, lam)
    cy, cx = (int(v) for v in torch.rand(2, generator=generator) * torch.tensor([H, W]))
    half_h, half_w = round(H * math.sqrt(1 - lam) / 2), round(W * math.sqrt(1 - lam) / 2)
    top, bottom = max(cy - half_h, 0), min(cy + half_h, H)
    left, right = max(cx - half_w, 0), min(cx + half_w, W)
    mixed = x.clone()
    mixed[:, :, top:bottom, left:right] = x[perm, :, top:bottom, left:right]
    return mixed, Mix(perm, 1 - (bottom - top) * (right - left) / (H * W))


@dataclass(frozen=True)
class DataConfig:
    """How a model wants its input, in the shape of timm's data config."""
    input_size: tuple[int, int, int]  # (C, H, W)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    crop_pct: float = 1.0  # resize the short side to size / crop_pct, then centre-crop

    @classmethod
    def from_dict(cls, cfg: dict) -> "DataConfig":
        """From timm's ``resolve_model_data_config`` output or a card's ``data_config``."""
        return cls(tuple(cfg["input_size"]), tuple(cfg["mean"]), tuple(cfg["std"]),
                   cfg.get("interpolation", "bicubic"), float(cfg.get("crop_pct", 1.0)))

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


# Mean and std: the training-set channel statistics of CIFAR-10 (a property of the data set,
# checked in the shared data README); the scratch model's card records them as its data config.
CIFAR10_DATA_CONFIG = DataConfig((3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


def resized_crop(size: tuple[int, int], input_size: tuple[int, int], crop_pct: float = 1.0
                 ) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """How timm's eval transform frames a photo of ``size`` = (width, height) for an input of
    ``input_size`` = (height, width): the size (width, height) the photo is resized to, its short
    side ``floor(min(input_size) / crop_pct)``, and the centre crop (left, top, right, bottom)."""
    w, h = size
    in_h, in_w = input_size
    short = math.floor(min(in_h, in_w) / crop_pct)  # timm's scale_size
    new_w, new_h = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    left, top = int(round((new_w - in_w) / 2.0)), int(round((new_h - in_h) / 2.0))
    return (new_w, new_h), (left, top, left + in_w, top + in_h)


def preprocess_batch(x: torch.Tensor, cfg: DataConfig) -> torch.Tensor:
    """uint8 (B, H, W, C) images to the model's normalised float (B, C, H', W') input, resized
    (e.g. CIFAR's 32 px up to 224) when the model's input size differs, on the batch's device."""
    x = x.permute(0, 3, 1, 2).float().div_(255)  # (B, C, H, W) in [0, 1]
    size = tuple(cfg.input_size[1:])
    if tuple(x.shape[-2:]) != size:
        mode = cfg.interpolation if cfg.interpolation in ("bilinear", "bicubic") else "bilinear"
        x = F.interpolate(x, size=size, mode=mode, align_corners=False).clamp_(0, 1)
    mean = torch.tensor(cfg.mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(cfg.std, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std
