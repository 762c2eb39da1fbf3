"""Every command in README.md runs (on the tiny generated tree, with tiny settings), so the
README cannot rot: a command added to the README without a way to run it here fails this test."""
from __future__ import annotations

import re
import shlex
import socket
from pathlib import Path

import numpy as np
import pytest
import yaml

from engine_helpers import run_cli, tiny_overrides
from urbanseg.data.io import read_image, write_png

README = Path(__file__).parents[1] / "README.md"
RUN = "runs/unet_resnet34_adam-1e-4_512x1024"


def readme_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def readme_commands() -> list[str]:
    lines = [line.split("  #")[0].strip() for block in readme_blocks("bash") for line in block.splitlines()]
    return [line for line in lines if line]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def runnable(command: str, root: Path, work: Path) -> list[str] | None:
    """The README command rewritten for this machine: tiny data, tiny model, few steps."""
    if command.startswith("make "):
        return None  # `make test` is this suite; `make demo` runs urbanseg demo, tested in test_demo.py
    command = command.replace("FILE", "configs/cityscapes/unet_resnet34_adam-1e-4_512x1024.yaml")
    command = command.replace("data/cityscapes", str(root)).replace("runs/", f"{work}/runs/")
    command = command.replace("configs/", f"{README.parent}/configs/")  # commands run in `work`
    command = command.replace("'photos/*.jpg'", f"'{work}/photos/*.jpg'").replace("my_predictions/", f"{work}/val_pred/")
    command = command.replace("--out submission", f"--out {work}/submission")
    command = command.replace("--out predictions", f"--out {work}/predictions")
    args = shlex.split(command)
    tiny = [o for o in tiny_overrides(root, "trainer.max_steps=2", "model.encoder_weights=null", "data.resize=null",
                                      "data.val_resize=null", "data.cache=null", "data.load_size=null")
            if not o.startswith(("model.name=", "model.options="))]  # keep each recipe's own model
    if args[0] == "torchrun":
        args = [a for a in args if not a.startswith(("--nnodes", "--node_rank", "--rdzv", "--nproc_per_node"))]
        args = ["python", "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
                "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{_free_port()}", *args[1:]]
        return [*args, *tiny, "trainer.sync_batchnorm=false", "--run-dir", f"{work}/runs/ddp-{_free_port()}"]
    assert args[0] == "urbanseg", command
    if args[1] == "train" and "--config" in args:
        return [*args[1:], *tiny]
    if args[1] == "train" and "--resume" in args:
        return [*args[1:], "trainer.max_steps=3"]
    return args[1:]


@pytest.mark.slow
def test_every_readme_command_runs(cityscapes_copy, tmp_path):
    import sys

    work = tmp_path
    for image in sorted((cityscapes_copy / "leftImg8bit" / "val").rglob("*.png"))[:2]:
        photo = work / "photos" / f"{image.stem}.jpg"
        photo.parent.mkdir(parents=True, exist_ok=True)
        import cv2

        cv2.imwrite(str(photo), read_image(image)[:, :, ::-1])
    commands = readme_commands()
    assert len(commands) >= 10
    ran = 0
    for command in commands:
        args = runnable(command, cityscapes_copy, work)
        if args is None:
            continue
        if "--predictions" in args:  # score the val predictions made by the README's own predict command
            best = f"{work}/{RUN}/checkpoints/best.pt"
            made = run_cli("predict", best, str(cityscapes_copy / "leftImg8bit" / "val"), "--out", f"{work}/val_pred",
                           "--format", "labelids", cwd=work)
            assert made.returncode == 0, made.stderr
        if args[0] == "python":
            import os
            import subprocess

            result = subprocess.run([sys.executable, *args[1:]], capture_output=True, text=True, timeout=300,
                                    env=dict(os.environ, OMP_NUM_THREADS="1"), cwd=work)
        else:
            result = run_cli(*args, cwd=work)
        assert result.returncode == 0, f"{command}\n{result.stderr[-2000:]}"
        ran += 1
    assert ran == len([c for c in commands if not c.startswith("make ")])
    assert (work / "submission").exists() and list((work / "submission").glob("*_labelIds.png"))
    assert list((work / "predictions").glob("*_entropy.png"))


def test_readme_yaml_snippets_are_valid_configs(tmp_path):
    from urbanseg.config import from_dict
    from urbanseg.engine.data import build_dataset

    rng = np.random.default_rng(0)
    for split in ("train", "val"):  # a tiny CamVid and a tiny folder dataset
        write_png(tmp_path / "CamVid" / split / "a.png", rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))
        write_png(tmp_path / "CamVid" / f"{split}annot" / "a.png", rng.integers(0, 12, (8, 8), dtype=np.uint8))
        write_png(tmp_path / "mine" / split / "images" / "a.png", rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))
        write_png(tmp_path / "mine" / split / "masks" / "a.png", rng.integers(0, 3, (8, 8), dtype=np.uint8))
    lines = [line.split("  #")[0] for block in readme_blocks("yaml") for line in block.splitlines() if line.strip()]
    assert len(lines) == 2
    for line in lines:
        raw = yaml.safe_load(line)
        raw["data"]["root"] = str(tmp_path / Path(raw["data"]["root"]).name)
        dataset = build_dataset(from_dict(raw).data, "train")
        image, mask = dataset[0]
        assert image.shape == (8, 8, 3) and mask.shape == (8, 8)


def test_readme_python_api_snippet_runs(tiny_checkpoint, cityscapes_root, tmp_path, monkeypatch):
    code = readme_blocks("python")[0]
    street = tmp_path / "street.png"
    write_png(street, read_image(sorted((cityscapes_root / "leftImg8bit" / "val").rglob("*.png"))[0]))
    monkeypatch.chdir(tmp_path)
    code = code.replace("runs/demo/checkpoints/best.pt", str(tiny_checkpoint))
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["labels"].shape == (64, 128) and namespace["probs"].shape == (19, 64, 128)
    assert namespace["names"][0] == "road"
