"""The universal network and its parts (see ``universal_net.UniversalSegNet``)."""
from .backbone import ResUNetBackbone
from .config import PRESETS, ConfigError, ModelConfig
from .context import PAD, SegContext, UnknownNameError, Vocabulary
from .precision import autocast, prepare_input, prepare_model, resolve_device, resolve_precision
from .universal_net import UniversalSegNet

__all__ = ["PAD", "PRESETS", "ConfigError", "ModelConfig", "ResUNetBackbone", "SegContext",
           "UniversalSegNet", "UnknownNameError", "Vocabulary", "autocast", "prepare_input",
           "prepare_model", "resolve_device", "resolve_precision"]
