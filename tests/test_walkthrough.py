"""The walkthrough's steps against timm and formulas written out here: the logit lens is timm's
``norm`` and ``head`` applied to [CLS] after each of its ``blocks``, the token colours are the
SVD of the centred tokens, the attention is the [CLS] row of timm's attention, the answer is
the model's output."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer

from vit_demo.model import PRESETS, ViT, ViTConfig, convert_timm_state_dict, timm_kwargs
from vit_demo.walkthrough import lens_agreement, settled_block, token_pca, top_k, walkthrough

pytestmark = pytest.mark.usefixtures("one_thread")
CFG = ViTConfig(image_size=32, patch_size=4, dim=48, depth=3, heads=3, mlp_ratio=2.0)


@pytest.fixture(scope="module")
def twins() -> tuple[VisionTransformer, ViT]:
    """timm's ViT at ``CFG`` with random weights, and ours with its weights converted."""
    torch.manual_seed(0)
    reference = VisionTransformer(**timm_kwargs(CFG))
    with torch.no_grad():
        for p in reference.parameters():
            p.normal_(0, 0.2)
    ours = ViT(CFG)
    ours.load_state_dict(convert_timm_state_dict(reference.state_dict(), CFG))
    return reference.eval(), ours.eval()


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def timm_steps(model: VisionTransformer, x: torch.Tensor) -> dict:
    """timm's forward pass written out through its own modules: the tokens before and after the
    position embeddings, the lens (``head(norm(x))`` on [CLS] after each block), and each
    block's attention probabilities recorded at ``attn_drop`` (unfused path)."""
    attentions, handles = [], []
    for block in model.blocks:
        block.attn.fused_attn = False
        handles.append(block.attn.attn_drop.register_forward_hook(
            lambda m, inp, out: attentions.append(out)))
    with torch.no_grad():
        patches = model.patch_embed(x)  # (1, N, dim)
        before = torch.cat([model.cls_token, patches], dim=1)[0]  # (1+N, dim)
        tokens = model._pos_embed(patches)  # (1, 1+N, dim)
        after = tokens[0]
        lens = []
        for block in model.blocks:
            tokens = block(tokens)
            lens.append(model.head(model.norm(tokens)[:, 0]).softmax(dim=-1)[0])  # (classes,)
        output = model(x).softmax(dim=-1)[0]
    for h in handles:
        h.remove()
    for block in model.blocks:
        block.attn.fused_attn = True
    return {"before": before, "after": after, "lens": torch.stack(lens), "output": output,
            "attentions": attentions[:len(model.blocks)]}


def svd_scores(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(every token's coordinates on the first three right singular vectors of the centred
    patch tokens (1+N, 3), their share of the variance (3,))."""
    patches = tokens[1:].double()
    mean = patches.mean(dim=0)
    _, s, vt = torch.linalg.svd(patches - mean, full_matrices=False)
    return (tokens.double() - mean) @ vt[:3].T, (s[:3] ** 2) / (s ** 2).sum()


def assert_same_up_to_sign(got: torch.Tensor, expected: torch.Tensor) -> None:
    signs = torch.sign((got.double() * expected).sum(dim=0))  # one per component
    assert torch.allclose(got.double() * signs, expected, atol=1e-4), (got, expected)


@pytest.mark.parametrize("kind", ["scratch", "timm"])
def test_the_lens_is_timms_norm_and_head_on_cls_after_each_block(twins, image, kind):
    reference, ours = twins
    expected = timm_steps(reference, image)
    steps = walkthrough(ours if kind == "scratch" else reference, kind, image)
    assert steps.lens.shape == (CFG.depth, CFG.num_classes)
    assert (steps.lens - expected["lens"]).abs().max() < 1e-4
    assert (steps.lens[-1] - expected["output"]).abs().max() < 1e-4  # the last block's lens is the output
    assert (steps.probabilities - expected["output"]).abs().max() < 1e-4
    assert not torch.allclose(steps.lens[0], steps.lens[-1], atol=1e-3)  # the blocks do change it


@pytest.mark.parametrize("kind", ["scratch", "timm"])
def test_the_token_colours_are_the_svd_of_the_centred_patch_tokens(twins, image, kind):
    reference, ours = twins
    expected = timm_steps(reference, image)
    steps = walkthrough(ours if kind == "scratch" else reference, kind, image)
    for pca, tokens in ((steps.tokens, expected["before"]), (steps.embedded, expected["after"])):
        scores, explained = svd_scores(tokens)
        assert pca.scores.shape == (1 + 64, 3)
        assert_same_up_to_sign(pca.scores, scores)  # [CLS] (row 0) on the patches' axes too
        assert torch.allclose(pca.explained.double(), explained, atol=1e-5)
        colours = pca.colours()
        assert colours.min() >= 0 and colours.max() <= 1
        assert torch.allclose(colours[1:].amin(dim=0), torch.zeros(3))  # the patches span [0, 1]
        assert torch.allclose(colours[1:].amax(dim=0), torch.ones(3))
    # adding position embeddings moves the tokens
    assert not torch.allclose(steps.tokens.scores.abs(), steps.embedded.scores.abs(), atol=1e-3)


def test_token_pca_of_a_known_cloud():
    """Points spread 10 : 3 : 1 along three orthogonal axes of a 5-d space (uncorrelated
    coordinates with zero mean), [CLS] off the cloud."""
    torch.manual_seed(0)
    noise = torch.randn(200, 3, dtype=torch.float64)
    columns = torch.linalg.qr(noise - noise.mean(dim=0)).Q  # (200, 3) orthonormal, centred
    coords = (columns * torch.tensor([10.0, 3.0, 1.0], dtype=torch.float64) * 200 ** 0.5).float()
    axes = torch.linalg.qr(torch.randn(5, 3)).Q.T  # (3, 5) orthonormal
    patches = coords @ axes + torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    cls = patches.mean(dim=0) + 7.0 * axes[1]
    pca = token_pca(torch.cat([cls[None], patches]))
    assert_same_up_to_sign(pca.scores[1:], coords.double())
    assert abs(abs(float(pca.scores[0, 1])) - 7.0) < 1e-4
    assert float(pca.scores[0, 0]) == pytest.approx(0.0, abs=1e-4)
    assert torch.allclose(pca.explained, torch.tensor([100.0, 9.0, 1.0]) / 110.0, atol=1e-5)


@pytest.mark.parametrize("kind", ["scratch", "timm"])
def test_the_attention_maps_are_the_cls_row_of_timms_attention_heads_averaged(twins, image, kind):
    reference, ours = twins
    expected = timm_steps(reference, image)["attentions"]
    steps = walkthrough(ours if kind == "scratch" else reference, kind, image)
    assert steps.attention.shape == (CFG.depth, 8, 8)
    for block, attn in enumerate(expected):  # (1, heads, 1+N, 1+N)
        cls_row = attn[0].mean(dim=0)[0, 1:].reshape(8, 8)
        assert (steps.attention[block] - cls_row).abs().max() < 1e-5


def test_the_top_5_is_the_lens_of_the_last_block(twins, image):
    _, ours = twins
    steps = walkthrough(ours, "scratch", image)
    classes = tuple(f"class {i}" for i in range(CFG.num_classes))
    answer = top_k(steps.probabilities, classes)
    assert list(answer) == list(top_k(steps.lens[-1], classes))
    assert len(answer) == 5 and list(answer.values()) == sorted(answer.values(), reverse=True)
    with torch.no_grad():
        best = ours(image).softmax(dim=-1)[0].topk(5)
    assert list(answer) == [classes[i] for i in best.indices]


def test_vit_b16_walkthrough_with_random_weights():
    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=10).eval()
    x = torch.randn(1, 3, 224, 224)
    steps = walkthrough(model, "timm", x)
    assert steps.grid == (14, 14) and steps.patch == (16, 16)
    assert steps.tokens.scores.shape == steps.embedded.scores.shape == (1 + 196, 3)
    assert steps.attention.shape == (12, 14, 14) and steps.lens.shape == (12, 10)
    assert torch.allclose(steps.attention.sum(dim=(1, 2)) <= 1.0 + 1e-5, torch.tensor(True))
    with torch.no_grad():
        expected = model(x).softmax(dim=-1)[0]
    assert (steps.lens[-1] - expected).abs().max() < 1e-4


def one_hot_lens(tops: list[list[int]]) -> torch.Tensor:
    """A lens (images, blocks, 4 classes) whose top-1 per image and block is ``tops``."""
    return torch.nn.functional.one_hot(torch.tensor(tops), 4).float()


TOPS = [[0, 1, 1, 1], [2, 2, 2, 2], [3, 1, 3, 0], [1, 0, 1, 1]]  # per image, the top-1 per block


def test_settled_block_is_where_the_top_1_becomes_final_for_good():
    assert settled_block(one_hot_lens(TOPS)).tolist() == [1, 0, 3, 2]


def test_lens_agreement_counts_per_block():
    stats = lens_agreement(one_hot_lens(TOPS), torch.tensor([1, 2, 0, 0]))
    assert stats["agrees"] == [0.5, 0.5, 0.75, 1.0]  # finals: 1, 2, 0, 1
    assert stats["settled"] == [0.25, 0.5, 0.75, 1.0]
    assert stats["accuracy"] == [0.25, 0.75, 0.5, 0.75]
    assert stats["final_probability"] == [0.5, 0.5, 0.75, 1.0]
    assert stats["mean_settled_block"] == 2.5  # (2 + 1 + 4 + 3) / 4


def test_one_image_in_eval_mode_only(twins, image):
    _, ours = twins
    with pytest.raises(ValueError, match="one image"):
        walkthrough(ours, "scratch", image.repeat(2, 1, 1, 1))
    model = ViT(PRESETS["cifar10-64x2/4"]).train()
    with pytest.raises(ValueError, match="training mode"):
        walkthrough(model, "scratch", image)
