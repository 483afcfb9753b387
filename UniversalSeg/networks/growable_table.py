"""A learned table of rows (prior tokens, class embeddings) that can grow without touching old rows.

Incremental learning (Hermes; U-Harmony "new classes and modalities") adds rows for new tasks or
modalities to a trained model. Old rows live in ``weight``; rows added later live in ``extra``, a
separate parameter, so an optimizer can train only the new rows while the old ones are frozen
(``requires_grad=False``), with no gradient masking that weight decay or momentum could undo.
Look-ups gather rows by index, so a request for old rows computes exactly what it did before.

State dicts always carry both keys; ``consolidate()`` (or loading a state dict with another split)
folds ``extra`` into ``weight`` so a saved model is rebuilt from its config alone; a state with the
table's own split (a checkpoint of a grown model, loaded into the same grown model) loads as is.
"""
from __future__ import annotations

import torch
from torch import nn


class GrowableTable(nn.Module):
    def __init__(self, rows: int, *row_shape: int, init: str = "xavier"):
        super().__init__()
        self.row_shape = tuple(row_shape)
        self.init = init
        self.weight = nn.Parameter(self._new_rows(rows))
        self.extra = nn.Parameter(torch.empty(0, *self.row_shape))
        self._register_load_state_dict_pre_hook(self._merge_on_load)

    def _new_rows(self, n: int, like: torch.Tensor | None = None) -> torch.Tensor:
        kw = {} if like is None else {"device": like.device, "dtype": like.dtype}
        t = torch.empty(n, *self.row_shape, **kw)
        if n == 0:
            return t
        if self.init == "zeros":
            return t.zero_()
        # Xavier on the flattened row shape, as the reference priors are initialised.
        flat = t.view(n, -1) if len(self.row_shape) == 1 else t.view(n * self.row_shape[0], -1)
        nn.init.xavier_uniform_(flat)
        return t

    @property
    def num_rows(self) -> int:
        return self.weight.shape[0] + self.extra.shape[0]

    def table(self) -> torch.Tensor:
        # always through cat, even with no new rows: both parameters stay in the autograd graph,
        # which DistributedDataParallel requires of every trainable parameter
        return torch.cat([self.weight, self.extra], dim=0)

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        """Rows for ``index`` (any shape of non-negative ints) -> index.shape + row_shape."""
        return self.table()[index]

    @torch.no_grad()
    def grow(self, n: int, freeze_old: bool = True) -> None:
        """Append ``n`` new rows (trainable); old rows are frozen unless ``freeze_old`` is False."""
        new = self._new_rows(n, like=self.weight)
        if self.extra.shape[0]:
            self.consolidate()
        self.extra = nn.Parameter(new)
        self.weight.requires_grad_(not freeze_old)

    @torch.no_grad()
    def consolidate(self) -> None:
        """Fold new rows into ``weight`` (one trainable table again)."""
        if self.extra.shape[0] == 0:
            return
        requires_grad = self.extra.requires_grad
        self.weight = nn.Parameter(torch.cat([self.weight, self.extra], 0), requires_grad=requires_grad)
        self.extra = nn.Parameter(self.extra.new_empty(0, *self.row_shape))

    def _merge_on_load(self, state_dict, prefix, *args, **kwargs):
        w, e = state_dict.get(prefix + "weight"), state_dict.get(prefix + "extra")
        if w is None:
            return
        if e is not None and w.shape == self.weight.shape and e.shape == self.extra.shape:
            return  # the same split (a resumed incremental run): load as is, old rows stay frozen
        merged = w if e is None or e.shape[0] == 0 else torch.cat([w, e], 0)
        if merged.shape[0] != self.num_rows:
            return  # let load_state_dict report the size mismatch
        if self.extra.shape[0]:
            self.consolidate()
        state_dict[prefix + "weight"] = merged
        state_dict[prefix + "extra"] = merged.new_empty(0, *self.row_shape)

    def extra_repr(self) -> str:
        return f"rows={self.num_rows} (new={self.extra.shape[0]}), row_shape={self.row_shape}"
