"""The scratch ViT against timm's VisionTransformer, and checkpoints against their cards."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from vit_demo.adapters import ModelKind
from vit_demo.card import ModelCard, load_model_tensors, read_card, save_model
from vit_demo.checkpoint import CheckpointError
from vit_demo.data import CIFAR10_DATA_CONFIG
from vit_demo.model import PRESETS, ViT, ViTConfig, convert_timm_state_dict, deepen, timm_kwargs
from vit_demo.registry import Registry, load_checkpoint


def timm_twin(cfg: ViTConfig) -> VisionTransformer:
    """timm's ViT at our configuration, with random (not default-initialised) weights."""
    model = VisionTransformer(**timm_kwargs(cfg))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    return model.eval()


def timm_attention(model: VisionTransformer, x: torch.Tensor) -> list[torch.Tensor]:
    """Attention probabilities from timm's unfused path, recorded at ``attn_drop``."""
    maps, handles = [], []
    for block in model.blocks:
        block.attn.fused_attn = False
        handles.append(block.attn.attn_drop.register_forward_hook(
            lambda m, inp, out: maps.append(out.detach())))
    model(x)
    for h in handles:
        h.remove()
    return maps


CONFIGS = {
    "cifar-cls": ViTConfig(image_size=32, patch_size=4, dim=96, depth=3, heads=3, mlp_ratio=2.0),
    "cifar-mean": ViTConfig(image_size=32, patch_size=4, dim=64, depth=2, heads=4, pool="mean"),
    "B/16": PRESETS["B/16"],
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_and_attention_equal_timm(name):
    torch.manual_seed(0)
    cfg = CONFIGS[name]
    reference = timm_twin(cfg)
    ours = ViT(cfg).eval()
    ours.load_state_dict(convert_timm_state_dict(reference.state_dict(), cfg))
    batch = 1 if name == "B/16" else 4
    x = torch.randn(batch, 3, cfg.image_size, cfg.image_size)
    with torch.no_grad():
        expected = reference(x)
        fast = ours(x)
        logits, attns = ours(x, return_attention=True)
        expected_attn = timm_attention(reference, x)
    assert (fast - expected).abs().max() < 1e-4
    assert (logits - expected).abs().max() < 1e-4
    rows, cols = cfg.grid_size
    assert len(attns) == cfg.depth
    for a, b in zip(attns, expected_attn):
        assert a.shape == (batch, cfg.heads, 1 + rows * cols, 1 + rows * cols)
        assert (a - b).abs().max() < 1e-5


def test_patch_dropout_equals_timms_in_training_and_is_off_in_eval():
    torch.manual_seed(0)
    cfg = replace(CONFIGS["cifar-cls"], patch_drop=0.5)
    reference = timm_twin(cfg).train()
    ours = ViT(cfg).train()
    ours.load_state_dict(convert_timm_state_dict(reference.state_dict(), cfg))
    tokens = []
    ours.blocks[0].register_forward_hook(lambda m, inp, out: tokens.append(inp[0].shape[1]))
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.manual_seed(1)
        expected = reference(x)
        torch.manual_seed(1)
        got = ours(x)
        torch.manual_seed(2)
        other = ours(x)
        full = ours.eval()(x)
        full_reference = timm_twin(replace(cfg, patch_drop=0.0))
        full_reference.load_state_dict(reference.state_dict())
        expected_full = full_reference(x)
    assert (got - expected).abs().max() < 1e-4
    assert (other - got).abs().max() > 1e-3  # another draw keeps other patches
    assert tokens == [1 + 32, 1 + 32, 1 + 64]  # [CLS] and half the 8x8 patches; all in eval
    assert (full - expected_full).abs().max() < 1e-4
    with pytest.raises(ValueError, match="patch_drop"):
        replace(cfg, patch_drop=1.0)


def test_converter_refuses_weights_it_cannot_represent():
    cfg = CONFIGS["cifar-cls"]
    state = timm_twin(cfg).state_dict()
    state["blocks.0.ls1.gamma"] = torch.ones(cfg.dim)  # layer scale: not in our model
    with pytest.raises(ValueError, match="cannot represent"):
        convert_timm_state_dict(state, cfg)


def test_mean_pooling_differs_from_cls_pooling():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    a = ViT(ViTConfig(dim=64, depth=1, heads=2))
    b = ViT(ViTConfig(dim=64, depth=1, heads=2, pool="mean"))
    b.load_state_dict(a.state_dict())
    torch.nn.init.normal_(a.head.weight)
    b.head.weight.data.copy_(a.head.weight)
    feats, _ = a.forward_features(x)
    norm = a.norm
    torch.testing.assert_close(a(x), a.head(norm(feats[:, 0])))
    torch.testing.assert_close(b(x), a.head(norm(feats[:, 1:].mean(1))))


def _save(tmp_path, name="m", cfg=None):
    cfg = cfg or PRESETS["cifar10-64x2/4"]
    model = ViT(cfg)
    card = ModelCard(ModelKind.SCRATCH, ("c",) * cfg.num_classes, CIFAR10_DATA_CONFIG, model_config=cfg)
    save_model(tmp_path, name, model.state_dict(), card)
    return model


def test_checkpoint_roundtrip_gives_identical_logits(tmp_path):
    torch.manual_seed(1)
    model = _save(tmp_path).eval()
    loaded, kind, _, card = load_checkpoint(tmp_path, "m")
    x = torch.randn(3, 3, 32, 32)
    assert kind == "scratch" and card.name == "m"
    assert torch.equal(model(x), loaded(x))


def test_card_describing_another_architecture_is_refused(tmp_path):
    _save(tmp_path)
    card_path = tmp_path / "m.json"
    card = read_card(tmp_path, "m")
    wider = replace(card, model_config=replace(card.model_config, dim=96))  # tensors are 64 wide
    card_path.write_text(wider.to_json())
    with pytest.raises(CheckpointError, match="does not match its card.*shapes.*file \\[.*card \\["):
        load_checkpoint(tmp_path, "m")


def test_tensors_swapped_under_a_card_are_refused(tmp_path):
    _save(tmp_path, "a")
    torch.manual_seed(5)
    _save(tmp_path, "b")
    (tmp_path / "b.safetensors").replace(tmp_path / "a.safetensors")
    with pytest.raises(CheckpointError, match="sha256 differs"):
        load_model_tensors(tmp_path, "a")


def test_unfinished_write_is_not_listed_and_names_cannot_escape(tmp_path):
    _save(tmp_path, "done")
    (tmp_path / "half.safetensors").write_bytes(b"partial")  # no card: an interrupted write
    registry = Registry(tmp_path / "shipped", allow_hub=False, finetune_dir=tmp_path)
    assert "half" not in registry.keys() and "done" in registry.keys()
    for bad in ("../done", "/etc/passwd", "a/b", ".hidden", ""):
        with pytest.raises(CheckpointError):
            load_model_tensors(tmp_path, bad)


def test_missing_scratch_checkpoint_says_how_to_get_it(tmp_path):
    registry = Registry(tmp_path, allow_hub=False)
    status = registry.status("scratch")
    assert status.state == "unavailable"
    assert "python -m vit_demo train" in status.reason


def test_deepened_model_computes_the_same_and_then_learns():
    """Net2Net deepening: same logits as the shallow model, yet the new blocks get gradients."""
    torch.manual_seed(0)
    shallow = ViT(PRESETS["cifar10-64x2/4"])
    with torch.no_grad():
        for p in shallow.parameters():
            p.normal_(0, 0.05)
    deep = deepen(shallow.eval(), 5).eval()
    x = torch.randn(4, 3, 32, 32)
    assert len(deep.blocks) == 5
    torch.testing.assert_close(deep(x), shallow(x), atol=1e-6, rtol=0)
    # the trained blocks sit at 0 and 2 (i * 5 // 2), the new ones are identity at first
    torch.testing.assert_close(deep.blocks[2].mlp.fc1.weight, shallow.blocks[1].mlp.fc1.weight)
    deep(x).square().sum().backward()
    assert deep.blocks[1].mlp.fc2.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="cannot deepen"):
        deepen(shallow, 1)
