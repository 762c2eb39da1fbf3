"""The `urbanseg` command: parses arguments and calls library functions, nothing more.

Each command imports what it needs when it runs (this module's one exception to imports at the
top): `urbanseg --help`, `synth` and `prepare` then start without loading PyTorch.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from .errors import ConfigError, TrainingError, UrbansegError


def parse_size(text: str) -> tuple[int, int]:
    """'256x512' -> (256, 512) as (height, width)."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH such as 256x512, got '{text}'") from None
    if height <= 0 or width <= 0:
        raise argparse.ArgumentTypeError(f"expected positive sizes, got '{text}'")
    return height, width


def add_backend_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=["auto", "pytorch", "onnxruntime", "openvino"], default="auto",
                        help="what runs the model (default: PyTorch for .pt, ONNX Runtime for .onnx; "
                             "openvino: an .onnx on OpenVINO, bf16 where the CPU has it)")


def cmd_synth(args: argparse.Namespace) -> int:
    from .data.synth import write_dataset

    counts = {"train": args.train, "val": args.val, "test": args.test}
    counts = {split: n for split, n in counts.items() if n > 0}
    write_dataset(args.out, counts, size=args.size, seed=args.seed, workers=args.workers)
    total = sum(counts.values())
    print(f"wrote {total} scenes ({', '.join(f'{s} {n}' for s, n in counts.items())}) "
          f"at {args.size[0]}x{args.size[1]} to {args.out}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from .data.prepare import check_cityscapes

    if args.cache_size and not args.cache:
        raise ConfigError("--cache-size: only meaningful with --cache DIR")
    report = check_cityscapes(
        args.root, write_train_ids=args.write_train_ids, cache_dir=args.cache, cache_size=args.cache_size
    )
    print(report.format())
    return 0 if report.ok else 1


def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .engine.checkpoint import resume_config
    from .engine.train import train
    from .report import write_run_figures

    if args.resume:
        cfg, run_dir = resume_config(args.resume, args.overrides), Path(args.resume)
    else:
        cfg = load_config(args.config, args.overrides)  # no --config: the defaults plus overrides
        run_dir = args.run_dir or Path("runs") / (args.config.stem if args.config else "default")
    result = train(cfg, run_dir, resume=bool(args.resume))
    if not result["main_process"]:  # under torchrun, rank 0 reports
        return 0
    write_run_figures(run_dir)
    metrics = result["metrics"]
    if metrics:
        print(f"done at step {result['step']}: val mIoU {metrics['miou']:.4f}, pixel accuracy "
              f"{metrics['pixel_accuracy']:.4f}; checkpoints in {Path(result['last']).parent}")
    return 0


def parse_scales(text: str) -> list[float]:
    try:
        scales = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 0.75,1,1.25, got '{text}'") from None
    if not scales or min(scales) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive scales, got '{text}'")
    return scales


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .crf import crf_from_options
    from .evaluation import format_table, run_evaluation

    crf = crf_from_options(args.crf, args.crf_params)
    metrics, out = run_evaluation(args.data_root, split=args.split, checkpoint=args.checkpoint,
                                  predictions=args.predictions, dataset=args.dataset, mode=args.mode,
                                  scales=args.scales, flip=args.tta == "flip", out=args.out, device=args.device,
                                  crf=crf, backend=args.backend)
    print(format_table(metrics))
    print(f"metrics, confusion matrix and per-class IoU written to {out}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .crf import crf_from_options
    from .inference import load
    from .predict import expand_inputs, parse_formats, predict_files

    formats = parse_formats(args.format)
    crf = crf_from_options(args.crf, args.crf_params)  # a missing pydensecrf2 fails before the model loads
    predictor = load(args.checkpoint, device=args.device, backend=args.backend, crf=crf)
    inputs = expand_inputs(args.inputs)
    written, problems = predict_files(predictor, inputs, args.out, formats, args.opacity, args.mode, args.scales,
                                      args.tta == "flip")
    for problem in problems:
        print(f"urbanseg: skipped {problem}", file=sys.stderr)
    print(f"wrote {len(written)} files for {len(inputs) - len(problems)} of {len(inputs)} images to {args.out}")
    return 1 if problems else 0


def cmd_cv(args: argparse.Namespace) -> int:
    from .config import load_config
    from .experiments.cv import run_cv

    cfg = load_config(args.config, args.overrides)
    run_dir = args.run_dir or Path("runs") / f"cv-{args.config.stem}"
    try:
        summary = run_cv(cfg, run_dir, args.folds, group=args.group, seed=args.seed, fold=args.fold,
                         summarize_only=args.summarize)
    except KeyboardInterrupt:
        print(f"urbanseg: interrupted; the same command continues where it stopped ({run_dir})", file=sys.stderr)
        return 130
    if summary is None:
        return 0
    held_out = summary["heldout"]
    for row in held_out["per_fold"]:
        print(f"fold {row['fold']}: held-out mIoU {row['miou']:.4f}, pixel accuracy {row['pixel_accuracy']:.4f}")
    print(f"mean ± std over {summary['folds']} folds: mIoU {held_out['mean']['miou']:.4f} ± "
          f"{held_out['std']['miou']:.4f}")
    if "val" in summary:
        print(f"fold ensemble on {summary['val']['split']}: mIoU {summary['val']['ensemble']['miou']:.4f}")
    print(f"summary in {run_dir / 'cv_summary.md'}, {run_dir / 'cv_summary.json'} and {run_dir / 'cv_class_iou.png'}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from .report import write_run_figures

    for path in write_run_figures(args.run_dir):
        print(path)
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from .config import load_config
    from .experiments.space import load_space
    from .experiments.tune import tune

    cfg = load_config(args.config, args.overrides)
    space = load_space(args.space)
    study = args.study or args.config.stem
    study_dir = args.run_dir or Path("runs") / f"tune-{study}"
    try:
        result = tune(cfg, space, args.trials, study_dir, study, storage=args.storage, pruner=args.pruner,
                      metric=args.metric, seed=args.seed)
    except KeyboardInterrupt:
        print(f"urbanseg: interrupted; the trial in progress is marked failed, the outputs so far are in "
              f"{study_dir}; the same command continues the study", file=sys.stderr)
        return 130
    for note in result.notes:
        print(f"note: {note}")
    if result.best_trial is None:
        print(f"{result.finished} trials finished, none complete (all pruned or failed); see {study_dir / 'trials.csv'}")
    else:
        print(f"{result.finished} trials finished; best: trial {result.best_trial}, {args.metric or cfg.trainer.monitor} "
              f"{result.best_value:.4f}; its config is {study_dir / 'best.yaml'}, every trial in {study_dir / 'trials.csv'}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_command, format_summary

    report = export_command(args.checkpoint, args.out, size=args.size, dynamic=args.dynamic, opset=args.opset,
                            quantize=args.quantize, calibration=args.calibration,
                            calibration_images=args.calibration_images)
    print(format_summary(report))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve import serve

    serve(args.model, host=args.host, port=args.port, max_upload_mb=args.max_upload_mb,
          max_megapixels=args.max_megapixels, queue=args.queue, workers=args.workers,
          token=args.token, device=args.device, backend=args.backend)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(Path(args.out), args.minutes)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="urbanseg", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="write a procedural street-scene dataset in Cityscapes layout")
    p.add_argument("out", type=Path, help="root of the Cityscapes tree to write")
    p.add_argument("--train", type=int, default=100, help="training images (default 100)")
    p.add_argument("--val", type=int, default=20, help="validation images (default 20)")
    p.add_argument("--test", type=int, default=0, help="test images (default 0)")
    p.add_argument("--size", type=parse_size, default=(256, 512), help="HEIGHTxWIDTH (default 256x512)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="processes generating in parallel")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("prepare", help="check a dataset tree and prepare it for training")
    p.add_argument("dataset", choices=["cityscapes"])
    p.add_argument("--root", type=Path, required=True, help="Cityscapes root (holds leftImg8bit/ and gtFine/)")
    p.add_argument("--write-train-ids", action="store_true", help="write *_gtFine_labelTrainIds.png beside each label")
    p.add_argument("--cache", type=Path, help="fill the decoded-array cache in this folder")
    p.add_argument("--cache-size", type=parse_size, help="HEIGHTxWIDTH to store in the cache (default: as is)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="train a model from a YAML config with key.sub=value overrides")
    p.add_argument("--config", type=Path, help="YAML recipe, e.g. configs/cityscapes/unet_resnet34_adam-1e-4_512x1024.yaml")
    p.add_argument("overrides", nargs="*", help="dotted overrides such as trainer.max_epochs=3 optim.lr=1e-3")
    p.add_argument("--run-dir", type=Path, help="output folder (default runs/<config name>)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="official Cityscapes-style metrics at full label resolution")
    p.add_argument("checkpoint", nargs="?", help="checkpoint (.pt) or exported model (.onnx) to evaluate (or use --predictions)")
    p.add_argument("--data-root", type=Path, required=True, help="dataset root, e.g. a Cityscapes folder")
    p.add_argument("--split", default="val")
    p.add_argument("--dataset", choices=["cityscapes", "camvid", "folder"], help="default: the checkpoint's")
    p.add_argument("--predictions", type=Path, help="score labelIds PNGs from any tool instead of a checkpoint")
    p.add_argument("--mode", choices=["whole", "slide"], default="whole")
    p.add_argument("--tta", choices=["none", "flip"], default="none")
    p.add_argument("--scales", type=parse_scales, default=[1.0], help="e.g. 0.75,1.0,1.25")
    p.add_argument("--out", type=Path, help="output folder (default: <run>/eval-<split>)")
    p.add_argument("--device", default="auto")
    crf_params_help = ("dense CRF parameters, default DeepLab v2's: iterations=10, smoothness_weight=3, smoothness_xy=1, "
                       "appearance_weight=4, appearance_xy=67, appearance_rgb=3 (xy in pixels, rgb in 0..255 steps)")
    p.add_argument("--crf", action="store_true", help="also score dense-CRF-refined predictions: metrics with and "
                   "without it (network run once; needs the crf extra)")
    p.add_argument("--crf-params", metavar="KEY=VALUE,...", help=crf_params_help)
    add_backend_argument(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="segment images, folders or glob patterns")
    p.add_argument("checkpoint", help="checkpoint (.pt) or exported model (.onnx)")
    p.add_argument("inputs", nargs="+", help="image files, folders or patterns such as 'photos/*.jpg'")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--format", default="color,overlay", help="any of color,overlay,labelids,trainids,probs,entropy")
    p.add_argument("--opacity", type=float, default=0.5)
    p.add_argument("--mode", choices=["whole", "slide"], default="whole")
    p.add_argument("--tta", choices=["none", "flip"], default="none")
    p.add_argument("--scales", type=parse_scales, default=[1.0])
    p.add_argument("--device", default="auto")
    p.add_argument("--crf", action="store_true",
                   help="refine every prediction with a dense CRF (needs the crf extra)")
    p.add_argument("--crf-params", metavar="KEY=VALUE,...", help=crf_params_help)
    add_backend_argument(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("cv", help="grouped k-fold cross-validation of a config (resumable, one fold per machine if wanted)")
    p.add_argument("--config", type=Path, required=True, help="YAML recipe, as for train")
    p.add_argument("overrides", nargs="*", help="dotted overrides such as trainer.max_steps=2000")
    p.add_argument("--folds", type=int, required=True, metavar="K", help="number of folds")
    p.add_argument("--group", choices=["city", "sequence", "none"],
                   help="what stays in one fold (default: city for Cityscapes, sequence for CamVid, "
                        "data.group_pattern or none for folder datasets)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fold assignment (default 0)")
    p.add_argument("--fold", type=int, metavar="I", help="train fold I only (0..K-1), e.g. one per machine")
    p.add_argument("--summarize", action="store_true", help="only collect the finished folds into the summary")
    p.add_argument("--run-dir", type=Path, help="output folder (default runs/cv-<config name>)")
    p.set_defaults(func=cmd_cv)

    p = sub.add_parser("plot", help="(re)draw a run's training curves, figures and HTML report")
    p.add_argument("run_dir", type=Path)
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("tune", help="hyperparameter search with Optuna: pruning, resumable, several processes on one study")
    p.add_argument("--config", type=Path, required=True, help="YAML recipe every trial starts from, as for train")
    p.add_argument("overrides", nargs="*", help="dotted overrides of the recipe, such as trainer.max_minutes=10")
    p.add_argument("--space", type=Path, required=True,
                   help="YAML mapping dotted keys to distributions, e.g. 'optim.lr: {log_float: [1e-4, 1e-2]}'")
    p.add_argument("--trials", type=int, required=True, metavar="N",
                   help="finished trials (complete or pruned) the study should hold, counting earlier runs and other processes")
    p.add_argument("--storage", help="Optuna journal file (one machine) or database URL such as "
                   "postgresql://user@host/db (several machines); default <run dir>/journal.log")
    p.add_argument("--study", help="study name (default: the config's file name)")
    p.add_argument("--pruner", choices=["median", "hyperband", "none"], default="median")
    p.add_argument("--metric", help="what to optimise, e.g. val/mIoU or val/loss (default: the config's trainer.monitor)")
    p.add_argument("--seed", type=int, help="seed of the TPE sampler (default: the config's trainer.seed)")
    p.add_argument("--run-dir", type=Path, help="study folder (default runs/tune-<study>); trials in <run dir>/trial-<number>")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("export", help="export a checkpoint to a self-describing ONNX model, checked against PyTorch")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--out", type=Path, required=True, help="the .onnx file to write (export.json goes beside it)")
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--size", type=parse_size,
                       help="HEIGHTxWIDTH of a fixed-size graph (default: the checkpoint's input size, else its window)")
    shape.add_argument("--dynamic", action="store_true", help="any batch, height and width")
    p.add_argument("--opset", type=int, help="ONNX opset, 18 or newer (default: the exporter's)")
    p.add_argument("--quantize", choices=["int8"], help="also write <out stem>.int8.onnx (ONNX Runtime static QDQ)")
    p.add_argument("--calibration", metavar="DIR_OR_SPLIT",
                   help="int8 calibration images: a folder, or a split of the checkpoint's dataset (default: train)")
    p.add_argument("--calibration-images", type=int, default=32, help="calibration images (default 32)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("serve", help="web page and HTTP API for a checkpoint (.pt) or an exported model (.onnx)")
    p.add_argument("model", help="best.pt or model.onnx")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-upload-mb", type=float, default=20, help="largest upload accepted (default 20)")
    p.add_argument("--max-megapixels", type=float, default=12, help="largest image accepted (default 12)")
    p.add_argument("--queue", type=int, default=8, help="requests that may wait for a worker; more get 503 (default 8)")
    p.add_argument("--workers", type=int, default=1, help="inference threads (default 1)")
    p.add_argument("--token", default=os.environ.get("URBANSEG_TOKEN"),
                   help="require 'Authorization: Bearer TOKEN' on /v1/* (default: $URBANSEG_TOKEN, else none)")
    p.add_argument("--device", default="auto")
    add_backend_argument(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("demo", help="run the whole job on built-in procedural data")
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    p.add_argument("--minutes", type=float,
                   help="time for the whole demo in minutes (default 5.75); training gets what the other steps leave")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UrbansegError as error:  # the user's to fix; anything else is our bug and keeps its traceback
        print(f"urbanseg: error: {error}", file=sys.stderr)
        return 1 if isinstance(error, TrainingError) else 2


if __name__ == "__main__":
    sys.exit(main())
