"""UniversalSeg: universal 3D medical image segmentation steered by task and modality priors.

The core package: networks, data, training, inference, model packages and the command line.
It never imports ``slicer``; the Slicer module in ``scripted_modules/`` is a thin layer over it.
"""
__version__ = "0.9.0"
