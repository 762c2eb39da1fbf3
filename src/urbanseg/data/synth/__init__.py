"""Procedural street scenes written in the exact Cityscapes layout (see `writer.write_dataset`)."""
from .writer import CITIES, render_scene, write_dataset

__all__ = ["CITIES", "render_scene", "write_dataset"]
