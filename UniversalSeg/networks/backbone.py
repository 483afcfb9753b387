"""The residual U-Net backbone (Hermes ResUNet), with named size presets.

Levels 0..4 have channels (w, 2w, 4w, 8w, 10w). Encoder: a stem 3x3x3 convolution and one block
at full resolution (``enc0``), then max-pool + ``encoder_blocks[L-1]`` blocks per level
(``enc1``..``enc4``). Decoder (``dec3``..``dec0``): trilinear 2x up-sampling, concatenation with
the skip, ``decoder_blocks[L]`` blocks. Presets small / base / large (w = 16 / 32 / 64) have
10.14M / 40.56M / 162.2M parameters, like the reference.

``forward`` takes a ``site_hook(stage, features) -> features`` that the universal network uses to
fuse priors into chosen stages: the fused map replaces the stage output, skips included.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import Stage, upsample2x
from .config import ModelConfig
from .harmonization import make_norm, make_output_layer, make_stem

SiteHook = Callable[[str, torch.Tensor], torch.Tensor]


class ResUNetBackbone(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        c = cfg.channels
        self.out_channels = c[0]
        self.stem = make_stem(cfg)  # per domain with 3D U2-Net's plug-in
        self.encoder = nn.ModuleList([Stage(cfg, c[0], c[0], 1, "enc0")])
        for level in range(1, 5):
            self.encoder.append(Stage(cfg, c[level - 1], c[level], cfg.encoder_blocks[level - 1],
                                      f"enc{level}"))
        self.decoder = nn.ModuleList(
            Stage(cfg, c[level] + c[level + 1], c[level], cfg.decoder_blocks[level], f"dec{level}")
            for level in range(3, -1, -1))
        self.final_norm = make_norm(cfg, c[0], "dec0")
        self.output_layer = make_output_layer(cfg)  # per domain with 3D U2-Net's plug-in

    def memory_format(self) -> torch.memory_format:
        """The format the weights were put in (``prepare_model``); activations follow it."""
        w = next(m.weight for m in self.modules()
                 if isinstance(m, nn.Conv3d) and m.weight.shape[1] > 1)
        if w.is_contiguous(memory_format=torch.channels_last_3d) and not w.is_contiguous():
            return torch.channels_last_3d
        return torch.contiguous_format

    def forward(self, x: torch.Tensor, ctx, site_hook: Optional[SiteHook] = None) -> torch.Tensor:
        hook = site_hook or (lambda stage, f: f)
        fmt = self.memory_format()  # keep every activation in it: no silent format conversions
        skips = []
        h = self.stem(x, ctx).contiguous(memory_format=fmt)
        for level, stage in enumerate(self.encoder):
            if level:
                h = F.max_pool3d(h, 2).contiguous(memory_format=fmt)
            h = hook(stage.name, stage(h, ctx))
            skips.append(h)
        for stage, skip in zip(self.decoder, reversed(skips[:-1])):
            h = torch.cat([skip, upsample2x(h)], dim=1).contiguous(memory_format=fmt)
            h = hook(stage.name, stage(h, ctx))
        h = F.relu(self.final_norm(h, ctx), inplace=True)
        return h if self.output_layer is None else self.output_layer(h, ctx)
