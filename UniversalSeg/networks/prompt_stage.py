"""Deprecated: the old name of ``UniversalSeg.networks.click_stage`` (the click stage); import that.

Importing this module gives the click-stage module itself (``PromptStage`` included, the old name
of ``ClickStage``), so that scripts written against the old name keep working unchanged; it warns
once (DeprecationWarning).
"""
import sys
import warnings

from . import click_stage

warnings.warn("UniversalSeg.networks.prompt_stage is deprecated: import UniversalSeg.networks.click_stage instead",
              DeprecationWarning, stacklevel=2)
sys.modules[__name__] = click_stage
