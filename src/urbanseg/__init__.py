"""urbanseg: semantic segmentation of urban driving scenes.

    import urbanseg
    predictor = urbanseg.load("runs/demo/checkpoints/best.pt")
    labels = predictor.predict("street.png")   # HxW array of class indices
"""
__version__ = "0.1.0"


def load(path, **options):
    """A `Predictor` for a checkpoint or an exported model; options (device, precision, backend, ...)
    as `urbanseg.inference.load` takes them."""
    # imported here, not at the top: `import urbanseg` (and so the CLI) stays free of PyTorch
    from .inference import load as _load

    return _load(path, **options)
