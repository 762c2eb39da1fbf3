"""urbanseg: semantic segmentation of urban driving scenes.

    import urbanseg
    predictor = urbanseg.load("runs/demo/checkpoints/best.pt")
    labels = predictor.predict("street.png")   # HxW array of class indices
"""
__version__ = "0.1.0"


def load(path, device: str = "auto", precision: str = "auto"):
    """A `Predictor` for a checkpoint (see `urbanseg.inference`)."""
    # imported here, not at the top: `import urbanseg` (and so the CLI) stays free of PyTorch
    from .inference import load as _load

    return _load(path, device, precision)
