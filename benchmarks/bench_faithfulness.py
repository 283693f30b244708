"""How well does each attention map explain the prediction? Deletion and insertion scores over
CIFAR-10 test images, for any checkpoint and any map method (``vit_demo.faithfulness``).

For each of the first N test images (class-balanced, fixed order), the model's predicted class
is the target; every method's map ranks the patches; the deletion and insertion areas of the
class probability are averaged over the images (lower deletion, higher insertion: better).
``random`` (a seeded random order per image) and ``centre`` (centre-first) are the baselines.

Run:
    python benchmarks/bench_faithfulness.py [--name vit-scratch-cifar10] [--images 500]
        [--methods rollout,rollout-discard-0.9,raw,grad,random,centre] [--steps 8]
        [--weights-dir weights] [--data-dir DIR] [--threads N] [--json out.json]

Prints a Markdown table (method, deletion, insertion, images, seconds).

    python benchmarks/bench_faithfulness.py --compare-steps 2,4 [--images 200] [--steps 8]

compares instead the coarse scores the attention tab shows (``PAGE_STEPS``) with the fine ones
of the table (``--steps``), image by image, for the gradient-weighted map and both baselines:
the mean absolute difference of the scores, and how often the two give the same verdict
against a centre guess and the same one-line reading. For scale, the same agreement between
the fine scores and the fine scores with another random order.

    python benchmarks/bench_faithfulness.py --cost [--name ...] [--runs 20] [--timm]

times instead what the attention tab pays per request, alternately so that machine load
affects all alike (medians): one forward pass of one image, the default (gradient-weighted)
map, and the scores of that map with both baselines, as the tab computes them (``PAGE_STEPS``,
the image's probability from the tab's own forward pass) and at the table's ``--steps``; each
also as a multiple of the forward pass. ``--timm`` adds the same for a randomly initialised
timm ViT-B/16 (224 px, 10 classes; random weights time the same as trained ones).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

# Run as a script from anywhere: make the repository root importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vit_demo.attention import explain  # noqa: E402
from vit_demo.checkpoint import default_weights_dir  # noqa: E402
from vit_demo.data import class_balanced_indices, load_cifar10, preprocess_batch  # noqa: E402
from vit_demo.faithfulness import (DEFAULT_STEPS, PAGE_STEPS, Scores, area, beats,  # noqa: E402
                                   centre_map, curves, faithfulness, mean_scores,
                                   perturbed_count, random_map, reading)
from vit_demo.registry import load_checkpoint  # noqa: E402

# method name -> explain() keyword arguments (None: a baseline map, not from the model)
METHODS = {
    "rollout": {"method": "rollout"},
    "rollout-discard-0.9": {"method": "rollout", "discard_ratio": 0.9},
    "raw": {"method": "raw"},  # the last layer's [CLS] attention, heads averaged
    "grad": {"method": "grad"},
    "random": None,
    "centre": None,
}
LABELS = {"rollout": "attention rollout", "rollout-discard-0.9": "rollout, discard ratio 0.9",
          "raw": "raw last-layer [CLS] attention", "grad": "gradient-weighted rollout",
          "random": "random order (baseline)", "centre": "centre-first (baseline)"}


def maps_for(model, kind: str, x: torch.Tensor, methods: list[str], seeds: list[int]
             ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """(method -> (B, rows, cols) maps, predicted classes (B,)) for a batch of inputs."""
    base = explain(model, kind, x)
    grid = base["grid_size"]
    targets = base["logits"].argmax(dim=-1)
    maps = {}
    for name in methods:
        kwargs = METHODS[name]
        if name == "random":
            maps[name] = torch.stack([random_map(*grid, seed=s) for s in seeds])
        elif name == "centre":
            maps[name] = centre_map(*grid).expand(x.shape[0], *grid)
        elif kwargs == {"method": "rollout"}:
            maps[name] = base["map"]
        else:
            maps[name] = explain(model, kind, x, target_class=targets if kwargs["method"] == "grad"
                                 else None, **kwargs)["map"]
    return maps, targets


def run(name: str, images: int, methods: list[str], steps: int, weights_dir: Path,
        data_dir: str | None) -> tuple[dict[str, Scores], float]:
    model, kind, batches = cifar_batches(name, images, data_dir, weights_dir)
    per_method: dict[str, list[Scores]] = {m: [] for m in methods}
    start = time.perf_counter()
    for idx, x in batches:
        maps, targets = maps_for(model, kind, x, methods, [int(i) for i in idx])
        for j in range(x.shape[0]):
            got = scores_of(curves(model, x[j], {m: maps[m][j] for m in methods}, int(targets[j]), steps))
            for m in methods:
                per_method[m].append(got[m])
        print(f"{len(per_method[methods[0]])}/{images} images, {time.perf_counter() - start:.0f} s",
              file=sys.stderr)
    return {m: mean_scores(s) for m, s in per_method.items()}, time.perf_counter() - start


def cifar_batches(name: str, images: int, data_dir: str | None, weights_dir: Path, batch: int = 50):
    """(model, kind, batches of (test indices, inputs)) for the first ``images`` test images,
    class-balanced, in test-set order."""
    model, kind, data_cfg, _ = load_checkpoint(weights_dir, name)
    test = load_cifar10("test", data_dir)
    order = class_balanced_indices(test.y, (images + 9) // 10)[:images]
    order = order[torch.argsort(order)]  # test-set order, class-balanced
    batches = ((order[b:b + batch], preprocess_batch(test.x[order[b:b + batch]], data_cfg))
               for b in range(0, len(order), batch))
    return model, kind, batches


def scores_of(got: dict[str, dict]) -> dict[str, Scores]:
    """The deletion and insertion areas of ``curves``' result."""
    return {m: Scores(area(c["deletion"]), area(c["insertion"])) for m, c in got.items()}


def compare_steps(name: str, images: int, coarse: list[int], fine: int, weights_dir: Path,
                  data_dir: str | None) -> dict[str, dict]:
    """Image by image, the gradient-weighted map's and both baselines' scores at each coarse step
    count against those at ``fine`` steps; "fine, another random order" is the fine scores with
    the random order of another seed, for scale. Returns row -> figures."""
    model, kind, batches = cifar_batches(name, images, data_dir, weights_dir)
    rows = {f"{s} steps": s for s in coarse} | {f"{fine} steps, another random order": fine}
    diffs: dict[str, dict[str, list[float]]] = {r: {m: [] for m in ("map", "random", "centre")}
                                                for r in rows}
    verdicts = {r: 0 for r in rows}
    readings = {r: 0 for r in rows}
    count = 0
    for idx, x in batches:
        maps, targets = maps_for(model, kind, x, ["grad", "random", "centre"], [int(i) for i in idx])
        for j in range(x.shape[0]):
            m = {"map": maps["grad"][j], "random": maps["random"][j], "centre": maps["centre"][j]}
            target = int(targets[j])
            ref = scores_of(curves(model, x[j], m, target, fine))
            for row, steps in rows.items():
                other = m | {"random": random_map(*m["random"].shape, seed=-1 - int(idx[j]))} \
                    if row.endswith("random order") else m
                got = scores_of(curves(model, x[j], other, target, steps))
                for k in diffs[row]:
                    diffs[row][k] += [abs(got[k].deletion - ref[k].deletion),
                                      abs(got[k].insertion - ref[k].insertion)]
                verdicts[row] += beats(got["map"], got["centre"]) == beats(ref["map"], ref["centre"])
                readings[row] += reading(got["map"], got["random"], got["centre"]) == \
                    reading(ref["map"], ref["random"], ref["centre"])
        count += x.shape[0]
    return {row: {"steps": steps, "inputs": perturbed_count(steps),
                  "mean_abs_diff": {k: sum(v) / len(v) for k, v in diffs[row].items()},
                  "same_verdict": verdicts[row] / count, "same_reading": readings[row] / count}
            for row, steps in rows.items()}


def cost(name: str, weights_dir: Path, runs: int, steps: int, timm_runs: int = 0
         ) -> dict[str, float]:
    """Median ms of a forward pass, the gradient-weighted map and its scores at ``PAGE_STEPS``
    (as the tab computes them) and at ``steps``, for one image; with ``timm_runs``, also a
    forward pass and the page's scores of a random ViT-B/16."""
    model, kind, data_cfg, _ = load_checkpoint(weights_dir, name)
    x = torch.randn(1, *data_cfg.input_size, generator=torch.Generator().manual_seed(0))
    result = explain(model, kind, x, method="grad")
    heatmap, probs = result["map"][0], result["logits"][0].softmax(dim=-1)
    target = int(probs.argmax())

    def forward(net, inputs):
        with torch.inference_mode():
            net(inputs)

    def page_scores(net, inputs, m, t, p):  # as the attention tab calls it
        return faithfulness(net, inputs, m, t, steps=PAGE_STEPS, image_probability=p)

    fns = {"forward pass": lambda: forward(model, x),
           "gradient-weighted map": lambda: explain(model, kind, x, method="grad"),
           f"scores at {PAGE_STEPS} steps (the page)":
               lambda: page_scores(model, x, heatmap, target, float(probs[target])),
           f"scores at {steps} steps (the table)": lambda: faithfulness(model, x, heatmap, target, steps)}
    medians = timed(fns, runs)
    if timm_runs:
        import timm

        vitb = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=10).eval()
        xb = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            pb = vitb(xb).softmax(dim=-1)[0]
        tb = int(pb.argmax())
        medians |= timed({"ViT-B/16 forward pass": lambda: forward(vitb, xb),
                          f"ViT-B/16 scores at {PAGE_STEPS} steps (on demand)":
                              # any map: the order of the patches does not change the time
                              lambda: page_scores(vitb, xb, centre_map(14, 14), tb, float(pb[tb]))},
                         timm_runs, warmup=1)
    return medians


def timed(fns: dict, runs: int, warmup: int = 2) -> dict[str, float]:
    """Median ms of each function over ``runs`` rounds, the functions alternating, after
    ``warmup`` rounds."""
    import statistics

    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(runs + warmup):
        for k, fn in fns.items():
            start = time.perf_counter()
            fn()
            if i >= warmup:
                times[k].append((time.perf_counter() - start) * 1000)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="vit-scratch-cifar10", help="checkpoint in the weights folder")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--weights-dir", type=Path, default=None)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--cost", action="store_true", help="time one request's parts instead")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--timm", action="store_true",
                        help="with --cost: also a random timm ViT-B/16 (a few runs: seconds each)")
    parser.add_argument("--compare-steps", default=None, metavar="STEPS",
                        help="compare the scores at these step counts (e.g. 2,4) with --steps instead")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    weights_dir = args.weights_dir or default_weights_dir()
    if args.cost:
        medians = cost(args.name, weights_dir, args.runs, args.steps,
                       timm_runs=max(3, args.runs // 5) if args.timm else 0)
        print(f"\n{args.name}, one image, {torch.get_num_threads()} threads, median of {args.runs}\n")
        for k, ms in medians.items():
            forward = medians["ViT-B/16 forward pass" if k.startswith("ViT-B/16") else "forward pass"]
            print(f"- {k}: {ms:.1f} ms ({ms / forward:.1f}x the forward pass)")
        return medians
    if args.compare_steps:
        coarse = [int(s) for s in args.compare_steps.split(",") if s.strip()]
        start = time.perf_counter()
        rows = compare_steps(args.name, args.images, coarse, args.steps, weights_dir, args.data_dir)
        print(f"\n{args.name}, {args.images} CIFAR-10 test images, gradient-weighted rollout, "
              f"against {args.steps} steps, {time.perf_counter() - start:.0f} s\n")
        print("| scores | inputs (map and both baselines) | mean abs. difference: map / random / centre "
              "| same verdict vs centre | same one-line reading |")
        print("| --- | --- | --- | --- | --- |")
        for row, r in rows.items():
            d = r["mean_abs_diff"]
            print(f"| {row} | {r['inputs']} | {d['map']:.3f} / {d['random']:.3f} / {d['centre']:.3f} "
                  f"| {r['same_verdict']:.0%} | {r['same_reading']:.0%} |")
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2))
        return rows
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    scores, seconds = run(args.name, args.images, methods, args.steps, weights_dir, args.data_dir)
    print(f"\n{args.name}, {args.images} CIFAR-10 test images, {args.steps} steps, "
          f"{seconds:.0f} s\n")
    print("| map | deletion (lower is better) | insertion (higher is better) |")
    print("| --- | --- | --- |")
    for m, s in scores.items():
        print(f"| {LABELS[m]} | {s.deletion:.3f} | {s.insertion:.3f} |")
    result = {"name": args.name, "images": args.images, "steps": args.steps, "seconds": seconds,
              "scores": {m: {"deletion": s.deletion, "insertion": s.insertion} for m, s in scores.items()}}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
