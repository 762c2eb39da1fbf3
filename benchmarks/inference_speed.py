"""Inference latency of one model through every backend, side by side in one run (batch 1).

    python benchmarks/inference_speed.py [--sizes 1024x2048,96x192] [--runs 5] [--warmup 2]
                                         [--model unet --encoder resnet34 | --checkpoint best.pt]

For each size: a random-init model (default U-Net/ResNet-34, 19 classes) is saved as a checkpoint,
exported with `urbanseg.export` (fp32 ONNX at that fixed size, and INT8 statically quantised on a
few generated street scenes), then timed on one generated scene through:

    PyTorch eager fp32 (what a user writes), + channels-last, + bf16 autocast (only where the CPU
    has native bf16), ONNX Runtime fp32, ONNX Runtime int8, and urbanseg's OpenVINO backend on the
    same ONNX files: f32, its CPU plugin's default precision (bf16 where native) and the int8
    graph, when `openvino` is installed.

Each path runs in a fresh process, so its peak resident memory (VmHWM, which includes Python
and the libraries) is its own; the median of `--runs` forward passes after `--warmup` is reported
with the argmax agreement against eager fp32 on the same input, the process's peak resident
memory and how much of it the forward passes added ("+MB": peak after minus peak before them).
Measures, asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from urbanseg.config import Config, DataConfig, ModelConfig
from urbanseg.data.labels import cityscapes_label_set
from urbanseg.data.preset import Preset
from urbanseg.data.io import read_image
from urbanseg.data.synth import write_dataset
from urbanseg.engine.checkpoint import Checkpoint, load_model, save_checkpoint
from urbanseg.engine.model import build_model
from urbanseg.engine.precision import cpu_has_native_bf16

PATHS = ("eager_fp32", "eager_fp32_channels_last", "eager_bf16_channels_last", "ort_fp32", "ort_int8", "openvino_fp32",
         "openvino_default", "openvino_int8")


def prepare(work: Path, size: tuple[int, int], model: str, encoder: str, trained: str | None) -> dict:
    """Checkpoint (random init, or a trained one's weights), fp32 and int8 ONNX files, and the
    input scene(s) for one size."""
    from urbanseg.export import export_onnx, quantize_int8

    preset = Preset(input_size=size, window=size)
    if trained:  # a trained model's logits have margins; random init's are near ties everywhere
        loaded = load_model(trained)
        cfg, labels, weights = loaded.config, loaded.labels, loaded.model.state_dict()
        cfg.data.root = str(work / "missing")  # the check and calibration use the generated scenes below
    else:
        torch.manual_seed(0)
        labels = cityscapes_label_set()
        cfg = Config(data=DataConfig(root=str(work / "missing"), crop=list(size), val_resize=list(size)),
                     model=ModelConfig(name=model, encoder=encoder))
        weights = build_model(cfg.model, labels.num_classes, pretrained=False).state_dict()
    checkpoint = work / "model.pt"
    save_checkpoint(checkpoint, Checkpoint(cfg.to_dict(), labels, preset, weights))
    scenes = work / "scenes"
    write_dataset(scenes, {"val": 9}, size=size, seed=0, workers=1)
    images = [read_image(p) for p in sorted((scenes / "leftImg8bit" / "val").rglob("*.png"))]
    fp32 = work / "model.onnx"
    export_onnx(checkpoint, fp32, size=size, check_images=images[:1])
    int8 = work / "model-int8.onnx"
    quantize_int8(fp32, int8, images[1:])
    np.save(work / "input.npy", images[0])
    return {"checkpoint": str(checkpoint), "fp32": str(fp32), "int8": str(int8), "input": str(work / "input.npy")}


def worker(path: str, files: dict, runs: int, warmup: int, out: str) -> None:
    """One path in this process: time it, save its argmax, print a JSON line."""
    from urbanseg.engine.precision import Precision
    from urbanseg.onnx_model import load_onnx

    image = np.load(files["input"])
    loaded = load_model(files["checkpoint"])
    x = loaded.preset.normalize(torch.from_numpy(image).permute(2, 0, 1)[None].float())
    if path.startswith("eager"):
        bf16 = "bf16" in path
        precision = Precision(torch.bfloat16 if bf16 else None, "channels_last" in path, "cpu")
        model = loaded.model.to(memory_format=torch.channels_last) if precision.channels_last else loaded.model
        forward = lambda: precision.forward(model, x)  # noqa: E731
    elif path.startswith("ort"):
        backend = load_onnx(files["int8" if "int8" in path else "fp32"], device="cpu").backend
        forward = lambda: backend(x)  # noqa: E731
    else:  # urbanseg's OpenVINO backend (optional extra). Its CPU plugin computes in bf16 by default where
        # the CPU has it natively: `_fp32` asks for f32 arithmetic, `_default` keeps the plugin's own choice
        from urbanseg.openvino_model import load_openvino

        source = files["int8" if "int8" in path else "fp32"]
        backend = load_openvino(source, "cpu", "fp32" if path.endswith("fp32") else "auto").backend
        forward = lambda: backend(x)  # noqa: E731
    seconds, before = [], peak_resident_mb()
    with torch.no_grad():
        for index in range(warmup + runs):
            start = time.perf_counter()
            logits = forward()
            if index >= warmup:
                seconds.append(time.perf_counter() - start)
    np.save(out, logits.argmax(dim=1)[0].numpy().astype(np.uint8))
    peak = peak_resident_mb()
    print(json.dumps({"path": path, "median_s": statistics.median(seconds), "peak_mb": peak,
                      "inference_mb": peak - before}))


def peak_resident_mb() -> float:
    """This process's peak resident memory (VmHWM). Not getrusage's ru_maxrss: Linux carries that
    over from the parent across fork and exec, so every worker would report the parent's peak."""
    with open("/proc/self/status") as handle:
        line = next(line for line in handle if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def run_path(path: str, files: dict, runs: int, warmup: int, work: Path) -> dict | None:
    out = work / f"{path}.npy"
    command = [sys.executable, __file__, "--worker", path, "--files", json.dumps(files), "--runs", str(runs),
               "--warmup", str(warmup), "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        print(f"  {path}: failed ({result.stderr.strip().splitlines()[-1] if result.stderr.strip() else '?'})")
        return None
    return {**json.loads(result.stdout.strip().splitlines()[-1]), "argmax": out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1024x2048,96x192")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--model", default="unet")
    parser.add_argument("--encoder", default="resnet34")
    parser.add_argument("--checkpoint", help="time this trained checkpoint's model instead of a random-init one")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--files", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, json.loads(args.files), args.runs, args.warmup, args.out)

    native = cpu_has_native_bf16()
    kind = "AVX-512 BF16 / AMX (native bf16)" if native else "no native bf16 (e.g. AVX2)"
    model = f"trained {args.checkpoint}" if args.checkpoint else f"{args.model}/{args.encoder} (random init)"
    print(f"CPU: {kind}, {len(os.sched_getaffinity(0))} cores, torch {torch.__version__}, "
          f"{model}, batch 1, median of {args.runs} after {args.warmup} warm-up")
    for text in args.sizes.split(","):
        size = tuple(int(v) for v in text.lower().split("x"))
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            files = prepare(work, size, args.model, args.encoder, args.checkpoint)
            paths = [p for p in PATHS if native or "bf16" not in p]
            results = {p: run_path(p, files, args.runs, args.warmup, work) for p in paths}
            reference = np.load(results["eager_fp32"]["argmax"])
            base = results["eager_fp32"]["median_s"]
            print(f"\n{size[0]}x{size[1]}")
            print(f"{'path':<28}{'median ms':>11}{'x eager':>9}{'agreement':>11}{'peak MB':>9}{'+MB':>7}")
            for path, result in results.items():
                if result is None:
                    continue
                agreement = float((np.load(result["argmax"]) == reference).mean())
                print(f"{path:<28}{result['median_s'] * 1000:>11.1f}{result['median_s'] / base:>9.2f}"
                      f"{agreement * 100:>10.2f}%{result['peak_mb']:>9.0f}{result['inference_mb']:>7.0f}")


if __name__ == "__main__":
    main()
