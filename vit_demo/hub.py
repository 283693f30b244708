"""Models from the Hugging Face hub, whatever architecture their ``config.json`` names.

``load_hub_vit("hf-hub:edadaltocg/vit_base_patch16_224_in21k_ft_cifar10")`` first asks timm
(``timm.create_model(name, pretrained=True)``). timm builds only the architectures it registers
under their plain or tagged names; a ``config.json`` naming ``timm/<name>`` or an architecture
another package registers (the CIFAR-10 ViT-B/16 was made with the ``detectors`` package) makes
it fail (and so do weights that do not fit what it builds). Then the weights file itself is
loaded into timm's architecture: the ``timm/``-stripped name when timm knows it, else
``vit_base_patch16_224`` (tag ``orig_in21k_ft_in1k``, the checkpoint's base), with as many
classes as the weights' head has. ``model.safetensors`` is preferred; ``pytorch_model.bin`` is
read with ``torch.load(weights_only=True)``, which unpickles tensors and plain containers only.
The data config is what ``config.json`` states, completed from that tag's (for ViT-B/16: 224 px,
mean and std 0.5, crop 0.9, bicubic).

Files come through huggingface_hub's cache (``HF_HOME``), so ``HF_HUB_OFFLINE=1`` and Spaces'
``preload_from_hub`` (``HUB_FILES``) work as for timm. Failures raise ``HubUnavailable`` with a
one-line reason and the way to get the model.
"""

from __future__ import annotations

import json
import pickle

import torch
import torch.nn as nn

from .data import DataConfig

HUB_PREFIX = "hf-hub:"
VITB16_HUB_REPO = "edadaltocg/vit_base_patch16_224_in21k_ft_cifar10"
FINETUNE_BASE = "vit_base_patch16_224.augreg2_in21k_ft_in1k"  # timm name of the fine-tune base
FINETUNE_BASE_REPO = f"timm/{FINETUNE_BASE}"
FALLBACK_ARCH = "vit_base_patch16_224.orig_in21k_ft_in1k"  # architecture and data config
SAFETENSORS_FILE, PICKLE_FILE = "model.safetensors", "pytorch_model.bin"

# Every hub file the app reads: the CIFAR-10 ViT-B/16 (timm reads config.json, then the weights;
# the repository has pytorch_model.bin) and the fine-tune tab's base (timm reads the
# safetensors file of a timm/ repository directly). The README's ``preload_from_hub`` lists them.
HUB_FILES: dict[str, tuple[str, ...]] = {
    VITB16_HUB_REPO: ("config.json", PICKLE_FILE),
    FINETUNE_BASE_REPO: (SAFETENSORS_FILE,),
}


HUB_HOST = "huggingface.co"


class HubUnavailable(RuntimeError):
    """The hub model cannot be loaded; the message says why and how to get it."""


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection (its name resolves, port 443)."""
    import socket

    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def hub_offline() -> bool:
    """Whether huggingface_hub works from its cache only (``HF_HUB_OFFLINE``)."""
    from huggingface_hub import constants

    return constants.is_offline_mode()


def hub_file_cached(repo_id: str, filename: str = SAFETENSORS_FILE) -> bool:
    """Whether ``filename`` of ``repo_id`` is in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, filename), str)


def load_hub_vit(name: str) -> tuple[nn.Module, DataConfig]:
    """The hub model ``name`` (``hf-hub:owner/name@revision``, prefix and revision optional) in
    eval mode, and the data config its input needs. Raises ``HubUnavailable``."""
    import timm
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HFValidationError

    repo_id, _, revision = name.removeprefix(HUB_PREFIX).partition("@")
    revision = revision or None
    try:
        with open(hf_hub_download(repo_id, "config.json", revision=revision),
                  encoding="utf-8") as f:
            config = json.load(f)
        arch = str(config.get("architecture", "")).removeprefix("timm/")
        arch = arch if timm.is_model(arch) else FALLBACK_ARCH
        try:
            model = timm.create_model(HUB_PREFIX + name.removeprefix(HUB_PREFIX), pretrained=True)
        except RuntimeError:  # an architecture timm does not know, or weights that do not fit it
            model = _load_weights_into_timm(repo_id, revision, arch)
    except (OSError, EntryNotFoundError, HFValidationError, pickle.UnpicklingError) as exc:
        raise HubUnavailable(_explain(repo_id, exc)) from exc
    return model.eval(), data_config(config, arch)


def data_config(config: dict, arch: str) -> DataConfig:
    """The input fields config.json states (timm's ``pretrained_cfg``, or the legacy one-dict
    layout), the rest from timm's config of ``arch`` (its default tag if untagged), not from
    ImageNet's defaults as timm itself would, which this checkpoint's base does not use."""
    import timm

    stated = config.get("pretrained_cfg", config)
    base = timm.models.get_pretrained_cfg(arch).to_dict()
    return DataConfig.from_dict({key: stated.get(key, base[key]) for key in
                                 ("input_size", "mean", "std", "interpolation", "crop_pct")})


def _load_weights_into_timm(repo_id: str, revision: str | None, arch: str) -> nn.Module:
    """The repository's weights (model.safetensors, else pytorch_model.bin) in timm's ``arch``."""
    import timm
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError
    from safetensors.torch import load_file

    try:
        state = load_file(hf_hub_download(repo_id, SAFETENSORS_FILE, revision=revision))
    except EntryNotFoundError:  # not in the repository, or (offline) not in the cache
        state = torch.load(hf_hub_download(repo_id, PICKLE_FILE, revision=revision),
                           map_location="cpu", weights_only=True)
    if "head.weight" not in state:
        raise HubUnavailable(f"{repo_id}: the weights have no classifier head ('head.weight'), "
                             f"so they are not a timm {arch} fine-tune")
    model = timm.create_model(arch, pretrained=False, num_classes=state["head.weight"].shape[0])
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:  # the first line is a heading; the second names a mismatch
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise HubUnavailable(f"{repo_id}: the weights do not fit timm's {arch}: "
                             f"{lines[1] if len(lines) > 1 else lines[0]}") from exc
    return model


def _explain(repo_id: str, exc: Exception) -> str:
    from huggingface_hub import constants
    from huggingface_hub.errors import (GatedRepoError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError)

    files = " ".join(HUB_FILES.get(repo_id, ("config.json", SAFETENSORS_FILE)))
    get_it = (f"run once with network access, or `hf download {repo_id} {files}` "
              "into the Hugging Face cache")
    if isinstance(exc, pickle.UnpicklingError):
        return (f"{repo_id}: {PICKLE_FILE} holds more than tensors, so it is not loaded "
                f"(torch.load with weights_only=True refused it: {str(exc).splitlines()[0][:120]})")
    if isinstance(exc, GatedRepoError):
        return (f"{repo_id} is gated on the Hugging Face hub: accept its terms and log in "
                "(`hf auth login`)")
    if isinstance(exc, RepositoryNotFoundError):
        return f"{repo_id}: no such model repository on the Hugging Face hub (or it is private)"
    if isinstance(exc, LocalEntryNotFoundError) or constants.is_offline_mode():
        why = "HF_HUB_OFFLINE=1" if constants.is_offline_mode() else "the hub could not be reached"
        return f"{repo_id} is not in the Hugging Face cache and {why}: {get_it}"
    detail = str(exc).splitlines()[0] if str(exc) else ""
    return (f"could not get {repo_id} from the Hugging Face hub ({type(exc).__name__}: {detail}); "
            f"{get_it}")
