"""Normalize, then denormalize per domain with a learned polynomial (U-Harmony-style, 2026).

Paper idea: standardise each sample and channel (instance norm, no affine), then "denormalize"
with a learned, polynomially parameterised transform that restores dataset-specific statistics;
a domain gate predicts a soft mixture of the domains' parameters, so inference needs no dataset
id. The paper does not publish the polynomial form or the gate; these are ours:

- Basis: probabilists' Hermite polynomials He_0..He_K of the standardised value x^. They are
  orthogonal under N(0, 1), which is what x^ approximately follows after standardisation, so the
  coefficients do not fight each other (plain powers x^k are strongly correlated). Degree K is
  ``harmonization.polynomial_degree`` (default 3: shift, scale, skew and tail shape).
- Parameters: one coefficient table per layer, [num_domains, K + 1, C], initialised to the
  identity (coefficient 1 on He_1, 0 elsewhere), so training starts as plain instance norm.
- Stability: terms of degree >= 2 use x^ clamped to [-4, 4]; a voxel 10 standard deviations out
  cannot explode in bf16, while the linear term keeps its full range.
- Mixing: coefficients = ``ctx.domain_weights`` @ table (one-hot for a known domain, the domain
  gate's softmax for an unknown one); one vectorised einsum for the batch.
- Where: ``harmonization.harmonized_stages`` (default every stage) picks the stages whose norms
  harmonize; the others keep plain instance norm. The paper does not say which layers it uses.
"""
from __future__ import annotations

import torch
from torch import nn

from .instance_norm import standardize

CLAMP = 4.0


def hermite_basis(x: torch.Tensor, degree: int) -> list[torch.Tensor]:
    """[He_1(x), He_2(xc), ..., He_K(xc)] with xc = clamp(x); He_0 = 1 is handled as a bias."""
    terms = [x]
    if degree >= 2:
        xc = x.clamp(-CLAMP, CLAMP)
        prev, cur = torch.ones_like(xc), xc
        for n in range(1, degree):
            prev, cur = cur, xc * cur - n * prev  # He_{n+1} = x He_n - n He_{n-1}
            terms.append(cur)
    return terms


class PolynomialHarmonizationNorm(nn.Module):
    def __init__(self, channels: int, num_domains: int, degree: int = 3):
        super().__init__()
        self.channels, self.degree = channels, degree
        coeffs = torch.zeros(num_domains, degree + 1, channels)
        coeffs[:, 1] = 1.0
        self.coeffs = nn.Parameter(coeffs)

    def forward(self, x: torch.Tensor, ctx) -> torch.Tensor:
        xh = standardize(x)
        theta = torch.einsum("bd,dkc->bkc", ctx.domain_weights.to(self.coeffs.dtype), self.coeffs)
        shape = (x.shape[0], self.channels) + (1,) * (x.dim() - 2)
        theta = theta.to(xh.dtype)
        terms = hermite_basis(xh, self.degree)
        out = theta[:, 1].view(shape) * terms[0] + theta[:, 0].view(shape)
        for k, term in enumerate(terms[1:], start=2):
            out = out + theta[:, k].view(shape) * term
        return out

    def extra_repr(self) -> str:
        return f"{self.channels}, domains={self.coeffs.shape[0]}, degree={self.degree}"
