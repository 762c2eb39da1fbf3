"""Every command, config snippet and Python example in README.md runs, so the README cannot rot.

How test_every_readme_command_runs runs the README's ```bash blocks, command by command:

- Variables. The README names its data and run folders with shell variables that it defines in
  visible lines such as `DATA=data/cityscapes  RUN=runs/...`. Here those definition lines are
  replaced by this test's own values (`variables_here`: the tiny generated tree, a run folder in
  a temp dir); the README must define exactly those names, and every `$NAME` a command uses.
- Running. Each command runs with `bash -c` in a temp working folder that holds `configs/` (a link
  to the checkout's) and the README's `photos/`, with `urbanseg` and `torchrun` on PATH as small
  scripts: `urbanseg` runs `urbanseg.cli.main` in a process forked from one that imported PyTorch
  and the package once (tests/preloaded_cli.py: the imports cost more than most commands here),
  `torchrun` is this interpreter's `python -m torch.distributed.run`, whose workers are fresh
  `python -m urbanseg` processes. Relative paths in the README (`submission`, `data/synthetic`,
  ...) land in that folder.
- Skipping. The commands in SKIPPED do not run here, each for the reason given there; every
  other command runs and must exit 0.
- Two adaptations, appended or flag-level, never a change of the README's wording:
  `urbanseg train` commands (also under torchrun) get TINY settings appended (2 steps, 64x128
  crops, fp32; each recipe keeps its own model and data root); torchrun's multi-GPU and
  multi-node flags become one node with 2 CPU processes (`single_node`).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import yaml

from engine_helpers import tiny_overrides, write_camvid
from urbanseg.data.io import read_image, write_png

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PRELOADED = Path(__file__).resolve().parent / "preloaded_cli.py"

# README commands that do not run in this test, and why.
SKIPPED = {
    "make demo": "runs `urbanseg demo` for minutes; tests/test_demo.py runs the demo small",
    "make test": "is this test suite",
    "make test-fast": "is part of this test suite",
    "pip install": "installs packages; the environment running this test is installed already",
    "python -m venv": "creates a new environment and downloads torch into it",
    "urbanseg serve": "runs until stopped; tests/test_serve*.py start the same service on 127.0.0.1",
}

# Appended to every `urbanseg train --config` command: tiny and fast, no download; the recipe keeps
# its own model (name and options) and the README's data root.
TINY = [o for o in tiny_overrides("unused", "trainer.max_steps=2", "model.encoder_weights=null", "data.resize=null",
                                  "data.val_resize=null", "data.cache=null", "data.load_size=null")
        if not o.startswith(("model.name=", "model.options=", "data.root="))]
RESUMED = ["trainer.max_steps=3"]  # appended to `urbanseg train --resume`: one step more than the run has
DISTRIBUTED = ["trainer.sync_batchnorm=false"]  # appended under torchrun: gloo on CPU has no SyncBatchNorm

DEFINITION = re.compile(r"(?:[A-Z][A-Z0-9_]*=\S+\s*)+")  # a line that only sets shell variables
USED = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")


def variables_here(data: Path, work: Path) -> dict[str, str]:
    """This test's values for the README's variables (other than the README's, so a hard-coded path fails)."""
    return {"DATA": str(data), "RUN": str(work / "test-run"), "HEAD": "127.0.0.1"}



def readme_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def readme_commands() -> list[str]:
    """Every line of the README's bash blocks, without comments, in order."""
    lines = [re.sub(r"(^|\s)#.*$", "", line).strip()
             for block in readme_blocks("bash") for line in block.replace("\\\n", " ").splitlines()]
    return [line for line in lines if line]


def skip_reason(command: str) -> str | None:
    for start, reason in SKIPPED.items():
        if command == start or command.startswith(start + " "):
            return reason
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def single_node(command: str) -> str:
    """torchrun's GPU and multi-node flags -> one node with 2 processes (gloo on CPU), a free local port."""
    command = re.sub(r"\s--(nnodes|node_rank|nproc_per_node|rdzv_backend|rdzv_endpoint|rdzv_id)=\S+", "", command)
    local = f"--nnodes=1 --nproc_per_node=2 --rdzv_backend=c10d --rdzv_endpoint=127.0.0.1:{_free_port()}"
    return re.sub(r"^torchrun\b", f"torchrun {local}", command)


def adapted(command: str) -> str:
    """The README command as run here: flags adapted for one CPU node, tiny settings appended."""
    words = shlex.split(command)
    appended: list[str] = []
    if words[0] == "torchrun":
        command, appended = single_node(command), DISTRIBUTED
    if "train" in words and "--config" in words:
        appended = [*TINY, *appended]
    elif "train" in words and "--resume" in words:
        appended = [*RESUMED, *appended]
    return " ".join([command, *map(shlex.quote, appended)])


@contextlib.contextmanager
def commands_on_path(folder: Path, env: dict[str, str]) -> Iterator[Path]:
    """`urbanseg` (served by a preloaded process started with `env`) and `torchrun` as scripts in
    `folder`, for as long as the context lasts."""
    folder.mkdir(parents=True)
    socket_path = Path(tempfile.mkdtemp(prefix="urbanseg-cli-")) / "socket"  # short: AF_UNIX paths are limited
    server = subprocess.Popen([sys.executable, str(PRELOADED), "serve", str(socket_path)], env=env,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready", "the preloaded urbanseg process did not start"
        commands = {"urbanseg": f'"{sys.executable}" "{PRELOADED}" run "{socket_path}"',
                    "torchrun": f'"{sys.executable}" -m torch.distributed.run'}
        for name, command in commands.items():
            script = folder / name
            script.write_text(f'#!/bin/sh\nexec {command} "$@"\n')
            script.chmod(0o755)
        yield folder
    finally:
        server.kill()
        server.wait()
        shutil.rmtree(socket_path.parent, ignore_errors=True)


def test_readme_commands_are_all_accounted_for(tmp_path):
    """Quick checks of what the slow test relies on: blocks, variables and skip rules."""
    languages = re.findall(r"^```(\S*)\n", README.read_text(), flags=re.M)[::2]  # opening fences
    assert set(languages) <= {"bash", "yaml", "python", ""}, f"a block the README tests do not read: {languages}"
    commands = readme_commands()
    defined = {name for c in commands if DEFINITION.fullmatch(c) for name in re.findall(r"([A-Z][A-Z0-9_]*)=", c)}
    assert defined == set(variables_here(tmp_path, tmp_path)), "the README's variables and this test's differ"
    used = {name for c in commands for name in USED.findall(c)}
    assert used <= defined, f"used in the README but not defined there: {sorted(used - defined)}"
    for start in SKIPPED:  # a rule no README command needs is stale
        assert any(skip_reason(c) == SKIPPED[start] for c in commands), f"SKIPPED['{start}'] matches no command"
    assert "make demo" in readme_blocks("bash")[0] and "make test" in readme_blocks("bash")[0]


@pytest.mark.slow
@pytest.mark.longest
def test_every_readme_command_runs(cityscapes_copy, tmp_path):
    import cv2

    work = tmp_path / "work"
    work.mkdir()
    (work / "configs").symlink_to(REPO / "configs")
    for image in sorted((cityscapes_copy / "leftImg8bit" / "val").rglob("*.png"))[:2]:  # the README's photos/
        (work / "photos").mkdir(exist_ok=True)
        cv2.imwrite(str(work / "photos" / f"{image.stem}.jpg"), read_image(image)[:, :, ::-1])
    write_camvid(work / "data/CamVid", {"train": 4, "val": 2}, (64, 96))  # where the README's CamVid commands look
    variables = variables_here(cityscapes_copy, work)
    bin_folder = tmp_path / "bin"
    env = dict(os.environ, **variables, OMP_NUM_THREADS="1", PATH=f"{bin_folder}{os.pathsep}{os.environ['PATH']}")

    commands = readme_commands()
    ran, outputs = 0, {}
    with commands_on_path(bin_folder, env):
        for command in commands:
            if skip_reason(command) or DEFINITION.fullmatch(command):
                continue
            result = subprocess.run(["bash", "-c", adapted(command)], cwd=work, env=env, capture_output=True,
                                    text=True, timeout=600)
            assert result.returncode == 0, f"{command}\n{result.stdout[-1000:]}\n{result.stderr[-3000:]}"
            outputs[command] = result.stdout
            ran += 1
    assert ran >= 10 and ran == len([c for c in commands if not skip_reason(c) and not DEFINITION.fullmatch(c)])

    # what the commands should have written
    data, run = cityscapes_copy, Path(variables["RUN"])
    assert list((data / "gtFine").rglob("*_gtFine_labelTrainIds.png"))  # prepare --write-train-ids
    assert (run / "checkpoints" / "best.pt").exists() and (run / "eval-val" / "metrics.json").exists()
    test_images = list((data / "leftImg8bit" / "test").rglob("*_leftImg8bit.png"))
    assert len(list((work / "submission").glob("*_labelIds.png"))) == len(test_images) > 0
    for kind in ("color", "overlay", "entropy"):
        assert len(list((work / "predictions").glob(f"*_{kind}.png"))) == 2, kind
    assert (work / "eval-val" / "metrics.json").exists()  # evaluate --predictions
    plotted = next(out for command, out in outputs.items() if command.startswith("urbanseg plot"))
    assert "report.html" in plotted and (run / "report.html").exists() and list((run / "figures").glob("*.png"))
    generated = work / "data" / "synthetic"  # urbanseg synth
    for split in ("train", "val"):
        images = list((generated / "leftImg8bit" / split).rglob("*_leftImg8bit.png"))
        labels = list((generated / "gtFine" / split).rglob("*_gtFine_labelIds.png"))
        assert len(images) == len(labels) > 0, split
    assert list((work / "runs").glob("*/checkpoints/best.pt"))  # the recipes trained with their default run dirs
    camvid = json.loads((work / "runs/unet_regnetx004_adamw_180x240_cpu_60min/eval-val/metrics.json").read_text())
    assert len(camvid["per_class"]) == 11  # the CamVid recipe trained and was scored on CamVid's classes


def test_readme_yaml_snippets_are_valid_configs(tmp_path, monkeypatch):
    from urbanseg.config import from_dict

    from urbanseg.data import build_dataset

    rng = np.random.default_rng(0)
    write_camvid(tmp_path / "data/CamVid", {"train": 1, "val": 1}, (8, 8))  # tiny datasets where the snippets' roots point
    for split in ("train", "val"):
        write_png(tmp_path / "data/mine" / split / "images" / "a.png", rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))
        write_png(tmp_path / "data/mine" / split / "masks" / "a.png", rng.integers(0, 3, (8, 8), dtype=np.uint8))
    monkeypatch.chdir(tmp_path)
    lines = [line.split("  #")[0] for block in readme_blocks("yaml") for line in block.splitlines() if line.strip()]
    assert len(lines) == 2
    for line in lines:
        dataset = build_dataset(from_dict(yaml.safe_load(line)).data, "train")
        image, mask = dataset[0]
        assert image.shape == (8, 8, 3) and mask.shape == (8, 8)


def test_readme_python_api_snippet_runs(tiny_checkpoint, cityscapes_root, tmp_path, monkeypatch):
    code = readme_blocks("python")[0]
    write_png(tmp_path / "street.png", read_image(sorted((cityscapes_root / "leftImg8bit" / "val").rglob("*.png"))[0]))
    checkpoint = tmp_path / "runs" / "demo" / "checkpoints" / "best.pt"  # where the snippet loads it from
    checkpoint.parent.mkdir(parents=True)
    shutil.copy(tiny_checkpoint, checkpoint)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["labels"].shape == (64, 128) and namespace["probs"].shape == (19, 64, 128)
    assert namespace["names"][0] == "road"
