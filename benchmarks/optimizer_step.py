"""Time of one Adam(W) step on a model's parameters: PyTorch's default (for-each) implementation vs
the fused kernel that `build_optimizer` picks on CPU and CUDA.

    python benchmarks/optimizer_step.py [--model configs/synthetic/unet_regnetx002_adamw_96x192_cpu_fp32.yaml] [--steps 50]

Gradients are random and fixed; the two optimizers are timed in alternation, so that the machine's
drift hits both. Also prints how far apart the two leave the parameters (float32 rounding only).
Measures, asserts nothing.
"""
from __future__ import annotations

import argparse
import time

import torch

from urbanseg.config import load_config
from urbanseg.engine.model import build_model

DEFAULT_MODEL = "configs/synthetic/unet_regnetx002_adamw_96x192_cpu_fp32.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="a recipe .yaml; its model is built with random init")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build_model(load_config(args.model).model, 19, pretrained=False)
    gradients = [torch.randn_like(p) for p in model.parameters()]
    copies, optimizers = {}, {}
    for name, fused in (("default", None), ("fused", True)):
        copies[name] = [p.detach().clone().requires_grad_() for p in model.parameters()]
        for param, gradient in zip(copies[name], gradients):
            param.grad = gradient.clone()
        optimizers[name] = torch.optim.AdamW([{"params": copies[name], "weight_decay": 1e-4}], lr=1e-3, fused=fused)
    count = sum(p.numel() for p in model.parameters())
    print(f"{args.model}: {count / 1e6:.2f} M parameters in {len(copies['default'])} tensors, "
          f"{torch.get_num_threads()} threads")
    times = {name: [] for name in optimizers}
    for _ in range(args.rounds):
        for name, optimizer in optimizers.items():
            optimizer.step()  # warm-up
            start = time.perf_counter()
            for _ in range(args.steps):
                optimizer.step()
            times[name].append((time.perf_counter() - start) / args.steps * 1000)
    for name, values in times.items():
        print(f"{name:8s} " + "  ".join(f"{v:6.2f} ms" for v in values))
    best = {name: min(values) for name, values in times.items()}
    print(f"fused / default: {best['fused'] / best['default']:.2f} (best of {args.rounds} rounds)")
    gap = max((a - b).abs().max().item() for a, b in zip(copies["default"], copies["fused"]))
    print(f"largest parameter difference after {args.rounds * (args.steps + 1)} steps: {gap:.2e} "
          f"(float32 rounding; each step moves a parameter by up to lr = 1e-3)")


if __name__ == "__main__":
    main()
