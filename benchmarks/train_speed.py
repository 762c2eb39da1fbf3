"""Training images/s of one optimizer step: fp32, fp32 + channels-last, bf16 autocast + channels-last.

    python benchmarks/train_speed.py [--models unet_scratch unet] [--size 256x512] [--batch 4] [--steps 6]
    python benchmarks/train_speed.py --models configs/synthetic/*.yaml --size 96x192 --batch 8   # demo models
    python benchmarks/train_speed.py --models configs/camvid/*_60min.yaml --size 176x240 --batch 8 --copy-paste
    python benchmarks/train_speed.py --models configs/camvid/*_60min.yaml --size 176x240 --batch 8 --compile

`--compile` adds a column: fp32 + channels-last with the model wrapped in `torch.compile`, as
`trainer.compile: true` wraps it (compiling happens in the untimed warm-up steps).
With PyTorch 2.14.1 on an AVX-512 CPU it aborts the process (heap corruption in Inductor's
code) for the CamVid 60-minute model at batch 8, 176x240; see configs/camvid/README.md.
`--copy-paste` adds a column: fp32 + channels-last with rare-class copy-paste (`data.copy_paste:
0.5`, 4 of the 19 classes) applied to every batch, as the training step applies it. The random
labels hold those classes far more often than street scenes do, so its cost is an upper bound.

Random inputs and labels (19 classes); the first two steps are warm-up and not timed. `unet` is
U-Net with a ResNet-34 encoder (random init); a `.yaml` recipe stands for its model (random init).
Measures, asserts nothing; compare numbers from one run only (this machine drifts 10-20% within an hour).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from urbanseg.config import OptimConfig, load_config
from urbanseg.data.copy_paste import CopyPaste
from urbanseg.engine.precision import cpu_has_native_bf16, pick_device, pick_precision
from urbanseg.engine.model import build_model
from urbanseg.losses import CrossEntropy
from urbanseg.models import create_model
from urbanseg.optim import build_optimizer

KWARGS = {"unet": {"encoder": "resnet34"}, "unet_scratch": {"base_channels": 64}}


def build(name: str) -> torch.nn.Module:
    if name.endswith(".yaml"):
        return build_model(load_config(name).model, 19, pretrained=False)
    return create_model(name, 19, **KWARGS.get(name, {}))


def images_per_second(name: str, precision_name: str, size, batch: int, steps: int,
                      channels_last=None, copy_paste: bool = False, compiled: bool = False) -> float:
    device = pick_device("auto")
    precision = pick_precision(precision_name, device, channels_last)
    torch.manual_seed(0)
    model = build(name).to(device)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(OptimConfig(name="adamw", lr=1e-3), model)  # as training builds it
    forward_model = torch.compile(model) if compiled else model  # as engine/state.py wraps it
    criterion = CrossEntropy()
    images = torch.randn(batch, 3, *size, device=device)
    labels = torch.randint(0, 19, (batch, *size), device=device)
    paste = CopyPaste([2, 6, 9, 10], 0.5) if copy_paste else None
    for step in range(steps + 2):
        if step == 2:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        if paste is not None:
            images, labels = paste(images, labels)
        loss = criterion(precision.forward(forward_model, images), labels)  # training's forward path
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["unet_scratch", "unet"])
    parser.add_argument("--size", default="256x512")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--copy-paste", action="store_true", help="add a column with rare-class copy-paste")
    parser.add_argument("--compile", action="store_true", help="add a column with torch.compile")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    print(f"device {pick_device('auto')}, native bf16 on this CPU: {cpu_has_native_bf16()}, "
          f"threads {torch.get_num_threads()}, batch {args.batch} at {args.size}")
    width = max(16, *(len(Path(name).stem) + 2 for name in args.models))
    extras = {"fp32+CL+paste img/s": {"copy_paste": True}} if args.copy_paste else {}
    if args.compile:
        extras["fp32+CL+compile img/s"] = {"compiled": True}
    print(f"{'model':<{width}}{'fp32 img/s':>12}{'fp32+CL img/s':>15}{'bf16+CL img/s':>15}"
          + "".join(f"{title:>{len(title) + 2}}" for title in extras))
    for name in args.models:
        fp32 = images_per_second(name, "fp32", size, args.batch, args.steps)
        fp32_cl = images_per_second(name, "fp32", size, args.batch, args.steps, channels_last=True)
        bf16 = images_per_second(name, "bf16", size, args.batch, args.steps)
        extra = ""
        for title, kwargs in extras.items():
            speed = images_per_second(name, "fp32", size, args.batch, args.steps, channels_last=True, **kwargs)
            extra += f"{speed:>{len(title) + 2}.2f}"
        print(f"{Path(name).stem:<{width}}{fp32:>12.2f}{fp32_cl:>15.2f}{bf16:>15.2f}{extra}")


if __name__ == "__main__":
    main()
