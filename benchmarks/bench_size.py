"""Parameters and forward FLOPs per image of the README's two models: the shipped scratch ViT
(from ``weights/``) and timm's ``vit_base_patch16_224`` with a 10-class head (the architecture
of the hub's CIFAR-10 ViT-B/16; random weights, as the count does not depend on them).

    python benchmarks/bench_size.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vit_demo.checkpoint import default_weights_dir  # noqa: E402
from vit_demo.data import CLASSES, DataConfig  # noqa: E402
from vit_demo.evaluate import flops_per_image, param_count  # noqa: E402
from vit_demo.registry import SCRATCH_CHECKPOINT, load_checkpoint  # noqa: E402


def main() -> dict[str, tuple[float, float]]:
    """{model: (parameters in millions, GFLOPs per image)}, printed one line each."""
    import timm

    scratch, _, scratch_cfg, _ = load_checkpoint(default_weights_dir(), SCRATCH_CHECKPOINT)
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=len(CLASSES))
    vit_cfg = DataConfig.from_dict(timm.data.resolve_model_data_config(vit))
    sizes = {name: (param_count(m) / 1e6, flops_per_image(m.eval(), cfg) / 1e9)
             for name, m, cfg in (("scratch ViT", scratch, scratch_cfg),
                                  ("ViT-B/16", vit, vit_cfg))}
    for name, (params, gflops) in sizes.items():
        print(f"{name}: {params:.2f} M parameters, {gflops:.3f} GFLOPs / image")
    return sizes


if __name__ == "__main__":
    main()
