"""Datasets, label tables, the decoded-array cache and augmentation pipelines."""
from .cache import DecodedCache, DirectLoader
from .camvid import CamVid
from .cityscapes import Cityscapes
from .dataset import Sample, SegmentationDataset
from .folder import FolderDataset
from .io import DataError
from .labels import LabelSet, camvid_label_set, cityscapes_label_set, folder_label_set

# name -> dataset class: the only dataset registry.
DATASETS = {"cityscapes": Cityscapes, "camvid": CamVid, "folder": FolderDataset}

__all__ = [
    "DATASETS", "CamVid", "Cityscapes", "DataError", "DecodedCache", "DirectLoader", "FolderDataset",
    "LabelSet", "Sample", "SegmentationDataset", "camvid_label_set", "cityscapes_label_set", "folder_label_set",
]
