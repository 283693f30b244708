"""Command line: ``python -m vit_demo train ...`` and ``python -m vit_demo evaluate ...``."""

from __future__ import annotations

import argparse
import datetime as dt
import inspect
import os
import re
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path
from typing import Literal, get_args, get_origin, get_type_hints

import torch

from .adapters import ModelKind
from .card import AccuracyMetrics, Metrics, ModelCard, Origin, Recipe, Training, save_model
from .checkpoint import default_weights_dir
from .data import CIFAR10_DATA_CONFIG, CLASSES, VAL_SIZE, load_cifar10, train_val_split
from .evaluate import confusion_png, model_metrics, param_count, store_metrics
from .model import PRESETS, ViT, deepen
from .registry import load_checkpoint
from .train import Progress, TrainConfig, Trainer, evaluate

ARTIFACTS_DIR = Path(__file__).resolve().parent.parent / "artifacts"


def add_config_options(parser: argparse.ArgumentParser, config: type) -> None:
    """One option per field of the dataclass ``config``: ``--field-name`` with the field's
    default and type (choices for a ``Literal``, ``--x/--no-x`` for a bool), its help the
    comment after the field in the source."""
    helps = {name: text.replace("%", "%%") for name, text in
             re.findall(r"^\s+(\w+):[^#\n]*#\s*(.+)$", inspect.getsource(config), re.M)}
    for f, hint in zip(fields(config), get_type_hints(config).values()):
        flag, kwargs = f"--{f.name.replace('_', '-')}", {"default": f.default, "help": helps.get(f.name)}
        if hint is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif get_origin(hint) is Literal:
            parser.add_argument(flag, choices=get_args(hint), **kwargs)
        else:
            parser.add_argument(flag, type=next(t for t in get_args(hint) or (hint,)
                                                if t is not type(None)), **kwargs)


def config_from_args(config: type, args: argparse.Namespace):
    """The dataclass ``config`` from the options ``add_config_options`` declared."""
    return config(**{f.name: getattr(args, f.name) for f in fields(config)})


def _setup_distributed() -> torch.device:
    """Join the torchrun group when launched by torchrun; the device this rank trains on."""
    cuda = torch.cuda.is_available()
    if "RANK" not in os.environ:
        return torch.device("cuda" if cuda else "cpu")
    torch.distributed.init_process_group("nccl" if cuda else "gloo")
    if not cuda:
        return torch.device("cpu")
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cuda", torch.cuda.current_device())


def _progress_bar(rank0: bool):
    """A tqdm bar and the ``Progress`` callback that drives it (validations printed)."""
    from tqdm import tqdm

    bar = tqdm(total=None, disable=not rank0, unit="step", dynamic_ncols=True)

    def report(p: Progress, what: str = "") -> None:
        bar.total, bar.n = p.total_steps, p.step
        bar.set_postfix(epoch=f"{p.epoch:.2f}", loss=f"{p.loss:.3f}", acc=f"{p.accuracy:.3f}",
                        img_s=f"{p.images_per_s:.0f}", lr=f"{p.lr:.2e}")
        if p.val_accuracy is not None:
            bar.write(f"{what}step {p.step}/{p.total_steps} epoch {p.epoch:.2f}: "
                      f"val accuracy {p.val_accuracy:.4f}")
    return bar, report


def _ship(args, model: ViT, model_cfg, preset: str, cfg: TrainConfig, train, val, device,
          history: list[dict], wall_s: float, origin: Origin | None = None, **training) -> None:
    """Evaluate ``model`` on the test set and write it with its card as ``args.name``."""
    test = evaluate(model, load_cifar10("test", args.data_dir), CIFAR10_DATA_CONFIG, device)
    card = ModelCard(ModelKind.SCRATCH, CLASSES, CIFAR10_DATA_CONFIG, param_count(model),
                     model_config=model_cfg, preset=preset, origin=origin,
                     recipe=Recipe.of(cfg, len(train), len(val), device),
                     training=Training.of(str(device), history, wall_s, **training),
                     metrics=Metrics(test=AccuracyMetrics.from_dict(test)),
                     date=dt.date.today().isoformat())
    path = save_model(args.out or default_weights_dir(), args.name,
                      model.state_dict(), card, overwrite=args.overwrite)
    print(f"test accuracy {test['accuracy']:.4f}; wrote {path}")


def cmd_recipe(args) -> None:
    """Run every stage of ``args.recipe`` (resuming each from ``args.run_dir``), then write the
    last stage's ViT under the recipe's checkpoint name."""
    from .recipe import load_recipe, run_recipe

    recipe = load_recipe(args.recipe)
    args.name = args.name or recipe.checkpoint
    run_dir = args.run_dir or Path("runs") / recipe.path.stem
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    train, val = train_val_split(load_cifar10("train", args.data_dir))
    if recipe.train_images:
        train = train.subset(torch.arange(min(recipe.train_images, len(train))))
    if recipe.val_images is not None:
        val = val.subset(torch.arange(min(recipe.val_images, len(val))))
    bar, report = _progress_bar(True)
    results = run_recipe(recipe, run_dir, train, val if len(val) else None, device,
                         callback=lambda stage, p: report(p, f"[{stage.name}] "))
    bar.close()
    last = results[-1]
    teacher = recipe.stage(recipe.final.teacher)
    _ship(args, last.model, last.stage.model_config(), last.stage.model, last.stage.train, train, val,
          device, last.history, last.elapsed_s, steps=last.steps,
          wall_s_total=round(sum(r.elapsed_s for r in results), 1), command=f"python -m vit_demo "
          f"train --recipe {recipe.path.as_posix()}", recipe_file=recipe.path.as_posix(),
          recipe_sha256=recipe.sha256,
          teacher=(f"hard distillation (weight {recipe.final.train.distill:g}) from a CNN "
                   f"({teacher.model}) trained here on CIFAR-10 alone"
                   if teacher else None))


def cmd_train(args) -> None:
    if args.recipe:
        return cmd_recipe(args)
    device = _setup_distributed()
    rank0 = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
    regularizers = {k: v for k, v in (("drop_path", args.drop_path), ("patch_drop", args.patch_drop))
                    if v is not None}
    model_cfg = replace(PRESETS[args.preset], **regularizers)
    cfg = config_from_args(TrainConfig, args)
    train, val = train_val_split(load_cifar10("train", args.data_dir))
    if args.train_images:
        train = train.subset(torch.arange(min(args.train_images, len(train))))
    if args.val_images is not None:
        val = val.subset(torch.arange(min(args.val_images, len(val))))
    torch.manual_seed(cfg.seed)
    model, origin = ViT(model_cfg), None
    if args.init_from:
        start, _, _, start_card = load_checkpoint(args.out or default_weights_dir(), args.init_from)
        if replace(start.cfg, depth=model_cfg.depth, **regularizers) != model_cfg:
            raise SystemExit(f"{args.init_from} is not the preset {args.preset} but for its depth")
        model.load_state_dict(deepen(start, model_cfg.depth).state_dict())
        how = (f"model.deepen: {start.cfg.depth} to {model_cfg.depth} blocks"
               if start.cfg.depth != model_cfg.depth else "trained further, same architecture")
        origin = Origin.of(start_card, how=how, training=start_card.training)
    bar, report = _progress_bar(rank0)
    trainer = Trainer(model, CIFAR10_DATA_CONFIG, train, cfg, val=val if len(val) else None,
                      device=device, state_path=args.resume, callback=report, model_config=model_cfg)
    already = trainer.step
    result = trainer.run()
    bar.close()
    if rank0 and args.name and not result.cancelled and result.step == trainer.end_step:
        _ship(args, model, model_cfg, args.preset, cfg, train, val, device, result.history,
              result.wall_s, origin, steps_last_run=result.step - already)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def cmd_evaluate(args) -> None:
    """Evaluate checkpoint ``args.name`` on the CPU; print, draw and optionally store the metrics."""
    weights_dir = args.weights_dir or default_weights_dir()
    if args.update_card and args.split != "test":
        raise SystemExit("--update-card stores test-set metrics: it goes with --split test only")
    model, _, data_cfg, card = load_checkpoint(weights_dir, args.name)
    if args.split == "test":
        data = load_cifar10("test", args.data_dir)
    else:
        train, val = train_val_split(load_cifar10("train", args.data_dir))
        data = train if args.split == "train" else val
    full = len(data)
    if args.limit:
        data = data.subset(torch.arange(min(args.limit, full)))
    metrics = model_metrics(model, data, data_cfg, len(card.classes))
    result = metrics.test
    subset = "" if len(data) == full else f", the first {len(data)} of {full}"
    print(f"{args.name}: {args.split} accuracy {result.accuracy:.4f} ({len(data)} images{subset})")
    for name, acc in zip(card.classes, result.per_class_accuracy):
        print(f"  {name:<12} {acc:.4f}")
    print(f"params {metrics.params:,}; {metrics.flops_per_image / 1e6:.1f} MFLOPs per image; "
          f"CPU latency {metrics.cpu_latency_ms:.2f} ms per image "
          f"(median, {metrics.cpu_threads} torch threads)")
    png = Path(args.png or ARTIFACTS_DIR / f"{args.name}-confusion.png")
    png.parent.mkdir(parents=True, exist_ok=True)
    png.write_bytes(confusion_png(result.confusion, card.classes,
                                  title=f"{args.name}: accuracy {result.accuracy:.2%} "
                                        f"on {len(data)} {args.split} images"))
    print(f"wrote {png}")
    if args.update_card:
        store_metrics(weights_dir, card, metrics)
        print(f"stored the metrics in {Path(weights_dir) / args.name}.json")


def cmd_inside(args) -> None:
    """Write the three figures of checkpoint ``args.name`` as PNGs; print the numbers."""
    from .inside_plots import cifar_distance_figure, weight_figures

    model, kind, data_cfg, _ = load_checkpoint(args.weights_dir or default_weights_dir(), args.name)
    weights = weight_figures(model, kind, args.name)
    distance = cifar_distance_figure(model, kind, data_cfg,
                                     load_cifar10("test", args.data_dir).x[:args.images], args.name)
    args.out.mkdir(parents=True, exist_ok=True)
    for figure, png in [("filters", weights.filters_png), ("positions", weights.positions_png),
                        ("distance", distance.png)]:
        path = args.out / f"inside-{args.name}-{figure}.png"
        path.write_bytes(png)
        print(f"wrote {path}")
    numbers = {**weights.to_json(), "attention_distance": distance.to_json()}
    print("position similarity by grid distance:", numbers["position_similarity_by_grid_distance"])
    for layer, heads in enumerate(numbers["attention_distance"]["mean_attention_distance_px"], 1):
        print(f"layer {layer}: mean attention distance per head (px) {heads}")
    print(f"uniform attention: {distance.uniform:.3f} px")


def cmd_recipe_report(args) -> None:
    """Print the run's stage table and validation curve (markdown) and draw the curve."""
    from .evaluate import learning_curve_png
    from .recipe import learning_curve, load_recipe

    recipe = load_recipe(args.recipe)
    run_dir = args.run_dir or Path("runs") / recipe.path.stem
    train_images = recipe.train_images or 50_000 - VAL_SIZE
    points, stages = learning_curve(recipe, run_dir, train_images)
    print("| stage | epochs | hours | PFLOPs | last validation | best validation |\n|---|---|---|---|---|---|")
    for s in stages:
        best = "" if s.best_val is None else f"{s.best_val:.2%}"
        last = "" if s.last_val is None else f"{s.last_val:.2%}"
        print(f"| {s.stage} | {s.epochs_done:.1f} / {s.epochs:g} | {s.hours:.2f} | {s.pflops:.2f} | {last} | {best} |")
    print("\n| stage | epoch | hours (cumulative) | PFLOPs (cumulative) | validation |\n|---|---|---|---|---|")
    for p in points:
        print(f"| {p.stage} | {p.epoch:.1f} | {p.hours:.2f} | {p.pflops:.2f} | {p.val_accuracy:.2%} |")
    args.png.parent.mkdir(parents=True, exist_ok=True)
    args.png.write_bytes(learning_curve_png(points, f"{recipe.path.name}: validation accuracy "
                                                    f"({len(points)} validations)"))
    print(f"\nwrote {args.png}")


def _checkpoint_command(sub, name: str, summary: str, run: Callable) -> argparse.ArgumentParser:
    """Subcommand ``name`` on a checkpoint and the test data, as ``evaluate`` and ``inside``
    take them."""
    p = sub.add_parser(name, help=summary)
    p.add_argument("--name", required=True, help="checkpoint name (NAME.safetensors + NAME.json)")
    p.add_argument("--weights-dir", type=Path, default=None, help="weights folder (default: weights/)")
    p.add_argument("--data-dir", default=None, help="folder with cifar10_test.npz (and "
                   "cifar10_train.npz for evaluate --split train or val; default: "
                   "$VIT_DEMO_DATA_DIR, else torchvision's download)")
    p.set_defaults(run=run)
    return p


def build_parser() -> argparse.ArgumentParser:
    from .deploy import add_arguments, cmd_deploy

    parser = argparse.ArgumentParser(prog="python -m vit_demo")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train the scratch ViT on CIFAR-10: every stage of a "
                       "--recipe, or one run from the options below")
    p.add_argument("--recipe", type=Path, default=None, help="a recipe file (recipes/NAME.toml): "
                   "run its stages in order, each resumed from --run-dir, and write the last "
                   "stage's ViT (the training options below are then the recipe's)")
    p.add_argument("--run-dir", type=Path, default=None,
                   help="with --recipe: the stages' resume states (default: runs/NAME)")
    p.add_argument("--preset", default="cifar10-192x9/4", choices=sorted(PRESETS))
    p.add_argument("--init-from", default=None, help="start from this scratch checkpoint in the "
                   "weights folder (deepened to the preset's depth when it is shallower)")
    add_config_options(p, TrainConfig)
    p.add_argument("--drop-path", type=float, default=None,
                   help="stochastic depth rate of the last block (default: the preset's, 0)")
    p.add_argument("--patch-drop", type=float, default=None, help="fraction of patch tokens "
                   "dropped per image in training, PatchDropout (default: the preset's, 0)")
    p.add_argument("--train-images", type=int, default=None, help="use only the first N training images")
    p.add_argument("--val-images", type=int, default=None,
                   help="validate on only the first N validation images (0: no validation)")
    p.add_argument("--data-dir", default=None, help="folder with cifar10_{train,test}.npz "
                   "(default: $VIT_DEMO_DATA_DIR, else torchvision's download)")
    p.add_argument("--resume", type=Path, default=None,
                   help="resume-state file: resumed when present, rewritten while training")
    p.add_argument("--out", type=Path, default=None, help="weights folder (default: weights/)")
    p.add_argument("--name", default=None, help="checkpoint name; omitted: no checkpoint is written")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(run=cmd_train)

    p = sub.add_parser("recipe-report", help="a recipe run's stages and validation curve so far: "
                       "markdown tables, and the curve against training hours and PFLOPs as a PNG")
    p.add_argument("--recipe", type=Path, required=True, help="the recipe file (recipes/NAME.toml)")
    p.add_argument("--run-dir", type=Path, default=None, help="its run folder (default: runs/NAME)")
    p.add_argument("--png", type=Path, default=ARTIFACTS_DIR / "training-curve.png",
                   help="where to draw the curve (default: artifacts/training-curve.png)")
    p.set_defaults(run=cmd_recipe_report)

    p = _checkpoint_command(sub, "evaluate", "test-set metrics of a checkpoint in weights/, "
                            "optionally stored in its card; or its accuracy on the training "
                            "or validation split", cmd_evaluate)
    p.add_argument("--split", choices=["test", "train", "val"], default="test",
                   help="the 10,000 test images, or the 45,000 training / 5,000 validation "
                   "images of the training run's fixed split (train: does the model fit what it "
                   "was trained on?)")
    p.add_argument("--png", type=Path, default=None,
                   help="confusion-matrix PNG (default: artifacts/NAME-confusion.png)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images of the split")
    p.add_argument("--update-card", action="store_true", help="store the metrics in NAME.json")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (also for the latency)")

    p = sub.add_parser("deploy", help="publish the app as a Hugging Face Space (--dry-run lists the files)")
    add_arguments(p)
    p.set_defaults(run=cmd_deploy)

    p = _checkpoint_command(sub, "inside", "draw the ViT paper's Fig. 7 for a checkpoint in "
                            "weights/: patch-embedding filters, position-embedding similarity, "
                            "mean attention distance", cmd_inside)
    p.add_argument("--out", type=Path, default=ARTIFACTS_DIR,
                   help="folder for inside-NAME-{filters,positions,distance}.png (default: artifacts/)")
    p.add_argument("--images", type=int, default=256,
                   help="average the attention distance over the first N CIFAR-10 test images")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "threads", None):  # train's and evaluate's --threads
        torch.set_num_threads(args.threads)
    return args.run(args) or 0  # deploy's exit status; the other commands return None
