"""The universal segmentation network: backbone + context priors + dynamic task head.

    outputs = model(image, ctx)           # ctx = model.context(tasks, modality, domain)
    outputs["logits"]          [B, T, D, H, W]  one independent sigmoid per requested task
    outputs["task_mask"]       [B, T]           False on padding slots (ignore their logits)
    outputs["modality_logits"] [B, M]           auxiliary modality head (when priors are fused)
    outputs["domain_logits"]   [B, D]           domain gate (when a domain plug-in is configured)
    outputs["features"]        [B, C, D, H, W]  the final features the task kernels read
    refined = model.refine(features, logits_of_one_task, positive, negative, task_ids)   # clicks
              (``click_stage``; only when ``config.prompt.enabled``)

The config (``ModelConfig``) fully describes the network; ``UniversalSegNet(config)`` rebuilds it
and ``load_state_dict`` fills it. ``add_tasks`` / ``add_modalities`` grow a trained model for
incremental learning: old rows and every other weight are frozen, so requests for old tasks give
bit-identical outputs while the new rows train.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from .backbone import ResUNetBackbone
from .config import STAGES, ModelConfig
from .context import SegContext, Vocabulary
from .growable_table import GrowableTable
from .harmonization import DomainBatchNorm, DomainGate, TaskMaskEmbedding, needs_domains
from .heads import DynamicTaskHead, ModalityHead, StaticTaskHead
from .prior_fusion import PriorFusionSite
from .click_stage import ClickStage
from ..errors import InputError


class UniversalSegNet(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.vocab = Vocabulary(config.tasks, config.modalities, config.domains)
        f, nt, nm = config.fusion, len(config.tasks), len(config.modalities)
        self.backbone = ResUNetBackbone(config)
        self.site_order = [s for s in STAGES if s in f.sites]
        self.sites = nn.ModuleDict({
            s: PriorFusionSite(config.stage_channels(s), f.sites[s], nt, nm, f.modality_tokens,
                               f.head_dim, f.mlp_ratio) for s in self.site_order})
        dims = [config.stage_channels(s) for s in self.site_order]
        c0 = config.channels[0]
        self.task_head = DynamicTaskHead(dims, c0) if config.head == "dynamic" else StaticTaskHead(nt, c0)
        self.modality_head = ModalityHead(dims, nm) if self.site_order else None
        self.domain_gate = DomainGate(config.in_channels, len(config.domains)) if needs_domains(config) else None
        h = config.harmonization
        self.class_aware_levels = sorted({int(s[-1]) for s in h.class_aware_stages}) if h.norm == "class_aware" else []
        self.mask_embedding = (TaskMaskEmbedding(nt, h.class_aware_embedding)
                               if self.class_aware_levels else None)
        self.prompt = None
        if config.prompt.enabled:
            # built with its own random numbers: every other weight, and every random number the
            # training draws later, is the same as in the network without the stage
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0x5EED)
                self.prompt = ClickStage(c0, config.prompt, nt)
        self._frozen_for_increment = False

    # ------------------------------------------------------------------ context
    def context(self, tasks: Sequence, modalities, domains=None, batch: Optional[int] = None,
                device=None) -> SegContext:
        """Context from names (see ``Vocabulary.context``); unknown names raise a clear error."""
        return self.vocab.context(tasks, modalities, domains, batch=batch, device=device)

    # ------------------------------------------------------------------ forward
    def check_input(self, image: torch.Tensor, ctx: SegContext) -> None:
        cfg = self.config
        if image.dim() != 5:
            raise ValueError(f"the network takes a batch of 3D images [B, C, D, H, W]; got a tensor "
                             f"with {image.dim()} dimensions {tuple(image.shape)}")
        if image.shape[1] != cfg.in_channels:
            raise ValueError(f"the network takes {cfg.in_channels} input channel(s), got {image.shape[1]}")
        bad = [s for s in image.shape[2:] if s % cfg.divisor]
        if bad:
            raise ValueError(f"spatial size {tuple(image.shape[2:])} must be a multiple of "
                             f"{cfg.divisor} on every axis (pad the image, or use the sliding-window "
                             f"predictor, which pads for you)")
        ctx.validate(image.shape[0], len(cfg.tasks), len(cfg.modalities), len(cfg.domains))

    def forward(self, image: torch.Tensor, ctx: SegContext) -> dict:
        self.check_input(image, ctx)
        outputs = {"task_mask": ctx.task_mask}
        ctx = ctx.replace(class_maps=None, domain_weights=None)
        if self.domain_gate is not None:
            domain_logits = self.domain_gate(image)
            outputs["domain_logits"] = domain_logits
            ctx = ctx.replace(domain_weights=DomainGate.weights(domain_logits.float(), ctx.domain_ids))
        if self.mask_embedding is not None:
            # CateNorm's two passes: a plain pass predicts the soft mask, the second uses it. As in
            # the reference (lambert-x/CateNorm, train.py) the first pass is SUPERVISED in training
            # (its logits come back as "first_logits" and the loss adds their term); the mask it
            # hands on is detached. At inference it runs without gradients.
            with torch.set_grad_enabled(self.training and torch.is_grad_enabled()):
                first = self._single_pass(image, ctx)[0]
            if self.training:
                outputs["first_logits"] = first
            first = first.detach()
            probs = torch.sigmoid(first.float()).to(first.dtype)
            ctx = ctx.replace(class_maps=self.mask_embedding(probs, ctx.task_ids, self.class_aware_levels))
        logits, modality_logits, features = self._single_pass(image, ctx)
        outputs["logits"] = logits
        outputs["features"] = features
        if modality_logits is not None:
            outputs["modality_logits"] = modality_logits
        return outputs

    def _single_pass(self, image, ctx):
        posteriors = {}

        def fuse(stage, features):
            if stage not in self.sites:
                return features
            features, posteriors[stage] = self.sites[stage](features, ctx)
            return features

        features = self.backbone(image, ctx, fuse)
        t = ctx.task_ids.shape[1]
        if isinstance(self.task_head, DynamicTaskHead):
            logits = self.task_head([posteriors[s][:, :t] for s in self.site_order], features)
        else:
            logits = self.task_head(ctx.task_ids, features)
        modality_logits = None
        if self.modality_head is not None:
            modality_logits = self.modality_head([posteriors[s][:, t:] for s in self.site_order])
        return logits, modality_logits, features

    def refine(self, features: torch.Tensor, logits: torch.Tensor, positive: torch.Tensor,
               negative: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        """One task's logits [B, 1, ...] corrected by click maps (``click_stage.click_maps``);
        ``task_ids`` [B]: whose logits they are (the stage is conditioned on it)."""
        if self.prompt is None:
            raise InputError("this model has no click-refinement stage (it was trained without "
                             "clicks); train or fine-tune it with clicks to refine interactively")
        return self.prompt(features, logits, positive, negative, task_ids)

    # ------------------------------------------------------------------ incremental learning
    def _tables(self, kind: str) -> list[GrowableTable]:
        tables = []
        for site in self.sites.values():
            tables.append(site.priors.tasks if kind == "task" else site.priors.modalities)
        if kind == "task":
            if isinstance(self.task_head, StaticTaskHead):
                tables.append(self.task_head.kernels)
            if self.mask_embedding is not None:
                tables.append(self.mask_embedding.table)
            if self.prompt is not None and self.prompt.task_film is not None:
                tables.extend(self.prompt.task_film)
        elif self.modality_head is not None:
            tables.append(self.modality_head.classes)
        return tables

    def add_tasks(self, names: Sequence[str], freeze: bool = True) -> None:
        """Grow every task table by ``names``; with ``freeze`` only the new rows stay trainable."""
        self._grow("task", list(names), freeze)
        self.config = self.config.replace(tasks=list(self.config.tasks) + list(names))
        self.vocab = Vocabulary(self.config.tasks, self.config.modalities, self.config.domains)

    def add_modalities(self, names: Sequence[str], freeze: bool = True) -> None:
        """Grow every modality table by ``names``; with ``freeze`` only the new rows stay trainable."""
        self._grow("modality", list(names), freeze)
        self.config = self.config.replace(modalities=list(self.config.modalities) + list(names))
        self.vocab = Vocabulary(self.config.tasks, self.config.modalities, self.config.domains)

    def _grow(self, kind: str, names: list[str], freeze: bool) -> None:
        known = self.config.tasks if kind == "task" else self.config.modalities
        if not names:
            raise InputError(f"add_{kind}s: give at least one new {kind} name")
        clash = [n for n in names if n in known]
        if clash or len(set(names)) != len(names):
            raise InputError(f"add_{kind}s: {clash or names} already known or repeated; "
                             f"known {kind}s: {list(known)}")
        tables = self._tables(kind)
        if not tables:
            raise InputError(f"this model has no {kind} priors to grow (fusion.sites is empty and "
                             "the head is static for modalities); retrain with priors instead")
        if freeze:
            grown = [t.extra for k in ("task", "modality") for t in self._tables(k) if t.extra.shape[0]]
            self.requires_grad_(False)
            for extra in grown:  # rows added by an earlier call (new tasks, then new modalities) still train
                extra.requires_grad_(True)
            self._frozen_for_increment = True
            self.train(self.training)
        for table in tables:
            table.grow(len(names), freeze_old=freeze)

    def train(self, mode: bool = True):
        super().train(mode)
        if self._frozen_for_increment:
            # frozen layers keep their running statistics while the new rows train
            for m in self.modules():
                if isinstance(m, (nn.BatchNorm3d, DomainBatchNorm)):
                    m.eval()
        return self

    def consolidate(self) -> None:
        """Fold grown rows into single tables and make every parameter trainable again."""
        for kind in ("task", "modality"):
            for table in self._tables(kind):
                table.consolidate()
        self.requires_grad_(True)
        self._frozen_for_increment = False

    # ------------------------------------------------------------------ introspection
    def num_parameters(self, part: str = "all") -> int:
        module = {"all": self, "backbone": self.backbone}[part]
        return sum(p.numel() for p in module.parameters())
