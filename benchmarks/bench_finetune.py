"""Fine-tuning throughput: the tiny CPU job of the fine-tune tab, and ViT-B/16 at 224 px on CUDA.

- CPU: the fine-tune tab's job body (``train_job``) end to end on real CIFAR-10 images, from a
  tiny random scratch checkpoint (the test suite's preset): training images/s (median over the
  steps after a warm-up), the job's wall time and how it splits.
- CUDA (only when a GPU is present): the shared ``Trainer`` on timm's ViT-B/16 (random weights;
  throughput does not depend on them) at batch ``--gpu-batch``, CIFAR-10 upsampled to 224 px
  on the GPU, bf16 autocast: images/s and model FLOPs utilisation (MFU) = images/s x training
  FLOPs per image (forward + backward, counted by ``FlopCounterMode`` on the meta device) /
  the GPU's dense bf16 peak (``PEAK_BF16_TFLOPS``, or ``$VIT_DEMO_PEAK_TFLOPS``).

Run: ``python benchmarks/bench_finetune.py [--cpu-steps N] [--threads N] [--gpu-steps N]``.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

# Run as a script from anywhere: make the repository root importable.
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from vit_demo.adapters import ModelKind  # noqa: E402
from vit_demo.card import ModelCard, save_model  # noqa: E402
from vit_demo.data import (CIFAR10_DATA_CONFIG, CLASSES, DATA_DIR_ENV, DataConfig,  # noqa: E402
                           DataUnavailable, Split, load_cifar10)
from vit_demo.evaluate import param_count  # noqa: E402
from vit_demo.finetune.job import prepare, train_job  # noqa: E402
from vit_demo.finetune.request import FinetuneRequest  # noqa: E402
from vit_demo.model import PRESETS, ViT  # noqa: E402
from vit_demo.registry import SCRATCH_CHECKPOINT, Registry  # noqa: E402
from vit_demo.train import Progress, TrainConfig, Trainer  # noqa: E402

TINY_PRESET = "cifar10-64x2/4"
PEAK_ENV = "VIT_DEMO_PEAK_TFLOPS"
# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity), from NVIDIA's data sheets; the first
# pattern found in the device name wins.
PEAK_BF16_TFLOPS = [("H200", 989.0), ("GH200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0),
                    ("H100", 989.0), ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0)]


def data_dir(arg: str | None) -> str | None:
    """--data-dir, else $VIT_DEMO_DATA_DIR, else ../shared/data/cifar10, else None."""
    if arg or os.environ.get(DATA_DIR_ENV):
        return arg or os.environ[DATA_DIR_ENV]
    shared = REPO.parent / "shared" / "data" / "cifar10"
    return str(shared) if shared.is_dir() else None


def peak_bf16_tflops(name: str) -> float | None:
    """The dense bf16 peak of GPU ``name``; a MIG slice ``Ng.`` gets N/7 of its GPU's peak."""
    if os.environ.get(PEAK_ENV):
        return float(os.environ[PEAK_ENV])
    peak = next((p for pattern, p in PEAK_BF16_TFLOPS if pattern in name), None)
    mig = re.search(r"MIG (\d)g\.", name)
    return peak * int(mig.group(1)) / 7 if peak and mig else peak


def bench_cpu_job(steps: int, batch: int, data: str | None, warmup: int) -> dict:
    """The tab's tiny CPU job: images/s while training and the job's wall time."""
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "weights"
        torch.manual_seed(0)
        model = ViT(PRESETS[TINY_PRESET])
        card = ModelCard(ModelKind.SCRATCH, CLASSES, CIFAR10_DATA_CONFIG, model_config=model.cfg,
                         preset=TINY_PRESET)
        save_model(weights, SCRATCH_CHECKPOINT, model.state_dict(), card)
        request = FinetuneRequest(base="scratch", train_images=steps * batch, steps=steps,
                                  batch_size=batch, lr=1e-3, name="bench", val_images=0,
                                  test_images=1000)
        rates, marks = [], {}
        start = time.perf_counter()
        job = prepare(request, Registry(weights, allow_hub=False), data)
        marks["prepared"] = time.perf_counter() - start
        for kind, value in train_job(job, str(Path(tmp) / "state.safetensors"),
                                     str(Path(tmp) / "bench.safetensors")):
            marks.setdefault(kind, time.perf_counter() - start)
            if kind == "progress" and value["step"] > warmup:
                rates.append(value["images_per_s"])
            elif kind == "error":
                raise RuntimeError(value)
            elif kind == "result":
                test_accuracy = value["test"]["accuracy"]
        wall = time.perf_counter() - start
    return {"preset": TINY_PRESET, "params": param_count(model), "steps": steps, "batch": batch,
            "threads": torch.get_num_threads(), "images_per_s": statistics.median(rates),
            "setup_s": marks["started"], "train_s": marks["result"] - marks["started"],
            "job_wall_s": wall, "test_accuracy": test_accuracy}


def train_flops_per_image(timm_name: str, size: int) -> int:
    """Forward + backward FLOPs of one image (matrix products and attention, 2 per MAC)."""
    import timm
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = timm.create_model(timm_name, pretrained=False, num_classes=len(CLASSES))
        with FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, 3, size, size)).float().sum().backward()
    return counter.get_total_flops()


def _train_split(data: str | None, n: int) -> Split:
    """The first ``n`` CIFAR-10 training images, or random images when the data set is missing."""
    try:
        train = load_cifar10("train", data, download=False)
        return train.subset(torch.arange(min(n, len(train))))
    except DataUnavailable:
        gen = torch.Generator().manual_seed(0)
        return Split(torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=gen),
                     torch.randint(0, len(CLASSES), (n,), generator=gen))


def bench_cuda_vitb16(steps: int, batch: int, data: str | None, warmup: int,
                      compile_model: bool) -> dict:
    """ViT-B/16 at 224 px: the Trainer's images/s and MFU against the GPU's bf16 peak."""
    import timm

    name = "vit_base_patch16_224"
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=len(CLASSES))
    data_cfg = DataConfig.from_dict({**timm.data.resolve_model_data_config(model), "crop_pct": 1.0})
    train = _train_split(data, batch * (steps + warmup))
    rates: list[float] = []

    def record(p: Progress) -> None:
        if p.step > warmup:
            rates.append(p.images_per_s)

    cfg = TrainConfig(epochs=1, batch_size=batch, lr=1e-4, warmup_epochs=0.1,
                      checkpoint_every=10 ** 9, compile=compile_model)
    trainer = Trainer(model, data_cfg, train, cfg, device=device, callback=record)
    result = trainer.run()
    size = data_cfg.input_size[1]
    flops = train_flops_per_image(name, size)
    rate = statistics.median(rates)
    gpu = torch.cuda.get_device_name(device)
    peak = peak_bf16_tflops(gpu)
    return {"model": name, "gpu": gpu, "input_px": size, "batch": batch, "steps": result.step,
            "compile": compile_model, "images_per_s": rate,
            "train_gflops_per_image": flops / 1e9, "achieved_tflops": rate * flops / 1e12,
            "peak_bf16_tflops": peak, "mfu": rate * flops / (peak * 1e12) if peak else None,
            "max_memory_gib": torch.cuda.max_memory_allocated(device) / 2 ** 30}


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmarks, print them, return {"cpu_tiny_job": {...}, "cuda_vit_b16": {...} or None}."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-steps", type=int, default=40, help="CPU job steps (default 40)")
    parser.add_argument("--cpu-batch", type=int, default=64, help="CPU job batch (default 64)")
    parser.add_argument("--gpu-steps", type=int, default=30, help="timed GPU steps (default 30)")
    parser.add_argument("--gpu-batch", type=int, default=128, help="GPU batch (default 128)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed first steps (default 5)")
    parser.add_argument("--compile", action="store_true", help="torch.compile on the GPU")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--data-dir", default=None, help="CIFAR-10 arrays folder")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    data = data_dir(args.data_dir)

    cpu = bench_cpu_job(args.cpu_steps, args.cpu_batch, data, args.warmup)
    print(f"CPU tiny job ({cpu['preset']}, {cpu['params']:,} params, batch {cpu['batch']}, "
          f"{cpu['threads']} threads): {cpu['images_per_s']:,.0f} images/s training; job "
          f"{cpu['job_wall_s']:.1f} s (set-up {cpu['setup_s']:.1f} s, train + test "
          f"{cpu['train_s']:.1f} s)")
    gpu = None
    if torch.cuda.is_available():
        gpu = bench_cuda_vitb16(args.gpu_steps, args.gpu_batch, data, args.warmup, args.compile)
        mfu = f"{gpu['mfu']:.1%}" if gpu["mfu"] is not None else f"unknown peak (set {PEAK_ENV})"
        print(f"CUDA {gpu['model']} {gpu['input_px']} px on {gpu['gpu']}, batch {gpu['batch']}, "
              f"bf16: {gpu['images_per_s']:,.0f} images/s, {gpu['achieved_tflops']:.0f} TFLOP/s "
              f"({gpu['train_gflops_per_image']:.1f} GFLOP per image), MFU {mfu}, "
              f"{gpu['max_memory_gib']:.1f} GiB")
    else:
        print("CUDA ViT-B/16: skipped (no GPU)")
    return {"cpu_tiny_job": cpu, "cuda_vit_b16": gpu}


if __name__ == "__main__":
    main()
