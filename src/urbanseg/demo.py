"""`urbanseg demo`: the pipeline end to end on procedural data, with no download.

So far the pipeline covers data: generate a Cityscapes-layout dataset, check it as a user's
Cityscapes copy would be checked, read it back through the dataset class and the training
augmentation, and write a preview sheet with the class shares of the training split.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .data.cityscapes import Cityscapes
from .data.io import write_png
from .data.prepare import check_cityscapes
from .data.synth import write_dataset
from .data.transforms import AugmentConfig, train_transform


def run_demo(out: Path, train: int = 40, val: int = 10, size: tuple[int, int] = (256, 512)) -> int:
    data_root = out / "data"
    write_dataset(data_root, {"train": train, "val": val}, size=size, seed=0, workers=2)
    print(f"generated {train} training and {val} validation scenes at {size[0]}x{size[1]} in {data_root}")

    report = check_cityscapes(data_root, progress=False)
    print(report.format())
    if not report.ok:
        return 1

    dataset = Cityscapes(data_root, "train")
    labels = dataset.labels
    counts = np.zeros(256, np.int64)
    rows = []
    for index in range(len(dataset)):
        image, mask = dataset[index]
        counts += np.bincount(mask.ravel(), minlength=256)
        if index < 4:
            rows.append(np.concatenate([image, labels.colorize(mask)], axis=1))
    sheet = out / "preview.png"
    write_png(sheet, np.concatenate(rows, axis=0))

    augment = train_transform(AugmentConfig(crop=(size[0] // 2, size[1] // 2)), labels.ignore_index)
    image_tensor, mask_tensor = augment(*dataset.load(0))
    print(f"augmented sample: image {tuple(image_tensor.shape)} {image_tensor.dtype}, "
          f"mask {tuple(mask_tensor.shape)} {mask_tensor.dtype}")

    shares = counts[: labels.num_classes] / counts.sum()
    print("class shares of the training split:")
    for name, share in sorted(zip(labels.class_names, shares), key=lambda item: -item[1]):
        print(f"  {name:<15}{share * 100:6.2f}%")
    print(f"ignored pixels   {counts[labels.ignore_index] / counts.sum() * 100:6.2f}%")
    print(f"preview sheet: {sheet}")
    return 0
