"""urbanseg: semantic segmentation of urban driving scenes."""
__version__ = "0.1.0"
