"""``convserve-train`` / ``python -m training``: train, evaluate, export and ship CNNs."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from training.errors import ConfigError, UserError  # no third-party import: see main()

DESCRIPTION = """\
Train, fine-tune, evaluate and export convserve CNNs, and rebuild the shipped models.

Every run is described by a YAML config (training/configs/*.yaml, or any file) whose keys can be
overridden with --set section.key=value (values are YAML: numbers, true/false, lists, null).
Outputs go to output_dir: config.yaml, checkpoint.pt, log.jsonl, metrics.json, curves.png,
confusion.png. Multi-process: torchrun --nproc_per_node=2 -m training train --config ...

examples:
  python -m training train --config mnist-lenet5
  python -m training train --config mnist-lenet5 --set optim.epochs=2 --set output_dir=runs/try
  python -m training finetune --config fashion-mobilenetv2
  python -m training train --config fer2013-vgg-small --set data.path=/data/fer2013.csv
  python -m training evaluate runs/mnist-lenet5
  python -m training train --init-from runs/try --set optim.epochs=1 --set output_dir=runs/more
  python -m training export runs/mnist-lenet5 --name mnist-lenet5 --version 1
  python -m training export models/fashion-mobilenetv2/1 --quantize int8
  python -m training ship --only imagenet-mobilenetv2 --overwrite
"""

CONFIG_HELP = """\
config keys (see training/config.py for a comment on each):
  model.{name,height,width,in_channels,kwargs}
  data.{name,path,channels,train_split,val_split,test_split,train_limit,eval_limit,
        resize_method,shorter_side,interpolation,crop,padding,scale,hflip_prob,rotation,
        normalization,whitening,whitening_epsilon,stats_images}
  optim.{epochs,batch_size,lr,momentum,nesterov,weight_decay,label_smoothing,schedule,
         step_epochs,gamma,warmup_epochs,min_lr_ratio}
  finetune.{pretrained,head_lr,backbone_lr,backbone_lr_scale,freeze_backbone_epochs}
  export.{name,version,task,labels}
  seed, workers, output_dir, device, checkpoint_every
"""


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", help="YAML config: a path or a name under "
                        "training/configs/ (e.g. mnist-lenet5)")
    parser.add_argument("--set", "-s", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config key, e.g. optim.lr=0.05 "
                        "(repeatable; dotted keys; YAML values)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with its four subcommands."""
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="convserve-train", description=DESCRIPTION,
                                     formatter_class=formatter)
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in (
        ("train", "Train a model as the config says (from scratch unless "
                  "finetune.pretrained=true)."),
        ("finetune", "Train starting from the model's pretrained (ImageNet) backbone with a new "
                     "head: like train with finetune.pretrained=true and backbone lr = 0.1 x lr "
                     "unless the config says otherwise."),
    ):
        sub = commands.add_parser(name, help=text.split(":")[0], description=text + "\n\n"
                                  + CONFIG_HELP, formatter_class=formatter)
        _add_config_args(sub)
        start = sub.add_mutually_exclusive_group()
        start.add_argument("--resume", metavar="CHECKPOINT", help="continue an interrupted run "
                           "from its checkpoint file or run directory; it ends with the weights "
                           "an uninterrupted run has, so a config that differs from the "
                           "checkpoint's (e.g. more epochs) is refused: use --init-from")
        start.add_argument("--init-from", metavar="CHECKPOINT", help="start a new schedule "
                           "(epoch 1 of optim.epochs, fresh optimizer and lr schedule) from a "
                           "checkpoint's weights and fitted preprocessing; config: the "
                           "checkpoint's unless --config is given, then --set")
    evaluate = commands.add_parser(
        "evaluate", help="Measure a checkpoint on a split (default: the config's test split).",
        description="Evaluate a trained checkpoint: loss, top-1, top-5 and the confusion "
                    "matrix, printed as JSON.")
    evaluate.add_argument("checkpoint", help="checkpoint.pt or the run's output directory")
    evaluate.add_argument("--split", help="split to evaluate (default: data.test_split)")
    evaluate.add_argument("--set", "-s", dest="overrides", action="append", default=[],
                          metavar="KEY=VALUE", help="override data keys, e.g. data.path=...")
    export = commands.add_parser(
        "export", help="Export a checkpoint to models/<name>/<version>/ (ONNX + model.json).",
        description="Export a trained checkpoint to ONNX with the preprocessing inside the "
                    "graph, check it (onnx.checker, ONNX Runtime vs PyTorch) and write "
                    "model.json. Refuses to write a model that fails the checks.")
    export.add_argument("checkpoint", help="checkpoint.pt or the run's output directory")
    export.add_argument("--name", help="model name (default: export.name in the config)")
    export.add_argument("--version", type=int, help="version (default: export.version)")
    export.add_argument("--models-dir", default="models", help="repository root (default models)")
    export.add_argument("--overwrite", action="store_true",
                        help="replace an existing models/<name>/<version>/")
    export.add_argument("--quantize", choices=["int8"],
                        help="int8: write <name>-int8, statically quantized by ONNX Runtime and "
                             "measured against the float model (refused when it loses more than "
                             "the limit; docs/int8.md). CHECKPOINT may then also be an exported "
                             "models/<name>/<version> directory")
    export.add_argument("--make-default", action="store_true",
                        help="write the version into models/<name>/default_version, so that "
                             "requests naming no version get it (after the service reloads)")
    from training.ship import add_arguments as add_ship_arguments

    add_ship_arguments(commands.add_parser(
        "ship", help="Rebuild the shipped models in models/ (every one, or --only NAME).",
        description="Rebuild every shipped model the same way (training/ship.py): export, "
                    "check each graph (onnx.checker, ONNX Runtime vs PyTorch), write model.json "
                    "last, then validate the version directory. Trained models are trained "
                    "from their config first (minutes to hours on a CPU)."))
    commands.add_parser("models", help="List the registered model names.")
    return parser


def _train(args: argparse.Namespace, defaults: dict[str, Any] | None) -> int:
    from training.checkpoints import load_checkpoint
    from training.config import from_dict, load_config, merge, parse_overrides
    from training.trainer import fit

    source = args.resume or args.init_from
    if source and not args.config:
        base = merge(load_checkpoint(source)["config"], parse_overrides(args.overrides))
        config = from_dict(base)
    else:
        if not args.config:
            raise ConfigError("give --config (a YAML file or a name under training/configs/)")
        config = load_config(args.config, args.overrides, defaults)
    metrics = fit(config, resume=args.resume, init_from=args.init_from)
    if int(os.environ.get("RANK", "0")) == 0:
        metrics = {k: v for k, v in metrics.items() if k != "confusion"}
        print(json.dumps({"output_dir": config.output_dir, **metrics}))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import torch

    from training.checkpoints import load_trained
    from training.config import from_dict, merge, parse_overrides
    from training.data.pipeline import build_split, eval_loader
    from training.engine import evaluate

    trained = load_trained(args.checkpoint)
    config = from_dict(merge(trained.config.to_dict(), parse_overrides(args.overrides)))
    split = args.split or config.data.test_split
    dataset = build_split(config, split, train=False)
    device = torch.device("cpu")
    metrics = evaluate(trained.model, trained.preprocessing.module(), eval_loader(config, dataset),
                       device, len(trained.labels), description=split)
    print(json.dumps({"checkpoint": str(args.checkpoint), "split": split, **metrics}))
    return 0


def _export(args: argparse.Namespace) -> int:
    from model_format import DEFAULT_FILE
    from model_format.layout import write_pin
    from training.export_run import export_checkpoint

    if args.quantize:
        from training.quantize import quantize_export

        result = quantize_export(args.checkpoint, name=args.name, version=args.version,
                                 models_dir=args.models_dir, overwrite=args.overwrite)
    else:
        result = export_checkpoint(args.checkpoint, name=args.name, version=args.version,
                                   models_dir=args.models_dir, overwrite=args.overwrite)
    print(result)
    pin = result.parent / DEFAULT_FILE
    if args.make_default:
        write_pin(result.parent, int(result.name))
        print(f"{pin}: {result.name} (the default once the service reloads)", file=sys.stderr)
    elif pin.is_file() and pin.read_text().strip() != result.name:
        print(f"{pin} still names version {pin.read_text().strip()}: requests that name no "
              f"version keep getting it; to make {result.name} the default, write "
              f"{result.name} there (or pass --make-default) and reload the service",
              file=sys.stderr)
    return 0


TRAIN_INSTALL = ("pip install -e '.[train]' (PyTorch, torchvision, onnx, matplotlib: about "
                 "6.2 GB with CUDA, 3.2 GB of it CUDA libraries; see README, Training)")
TRAIN_MODULES = frozenset({"torch", "torchvision", "onnx", "onnxruntime", "matplotlib", "h5py",
                           "tqdm", "efficientnet_lite_pytorch"})


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``convserve-train`` and ``python -m training``."""
    try:
        return _main(argv)
    except ModuleNotFoundError as error:  # the serving install has no torch
        if (error.name or "").split(".")[0] not in TRAIN_MODULES:
            raise
        print(f"error: training needs the 'train' extra, which is not installed here (no "
              f"module {error.name!r}); install it with: {TRAIN_INSTALL}", file=sys.stderr)
        return 2


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=args.log_level.upper() if rank == 0 else "WARNING",
                        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s")
    try:
        if args.command in ("train", "finetune"):
            from training.config import FINETUNE_DEFAULTS

            return _train(args, FINETUNE_DEFAULTS if args.command == "finetune" else None)
        if args.command == "evaluate":
            return _evaluate(args)
        if args.command == "export":
            return _export(args)
        if args.command == "ship":
            from training.ship import run

            return run(args)
        from training.models import list_models

        print("\n".join(list_models()))
        return 0
    except UserError as error:  # training/errors.py; anything else is a bug: its traceback
        print(f"error: {error.for_cli()}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
