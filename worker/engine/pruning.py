"""Magnitude pruning (layer-wise or global) and the random-pruning control.

Each function takes the current mask and the trained weights and returns a new mask that removes
the requested fraction of the *surviving* weights with the smallest absolute value. Counts are
rounded to the nearest integer, so the fraction pruned is exact up to one weight per layer. Ties are
broken by position (a stable sort), which keeps pruning deterministic.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from api_schemas.spec import LayerRates
from worker.engine.masks import Mask, PrunableLayer


def layer_rate(layer: PrunableLayer, rates: LayerRates) -> float:
    """The paper's per-layer rate: by layer type, the output layer at half its type's rate."""
    base = rates.linear if layer.kind == "linear" else rates.conv
    if layer.is_output:
        return rates.output if rates.output is not None else base / 2
    return base


def _prune_smallest(scores: Tensor, alive: Tensor, count: int) -> Tensor:
    """Turn off the ``count`` surviving entries with the smallest score; returns the new mask."""
    new = alive.clone()
    if count <= 0:
        return new
    flat_scores = torch.where(alive, scores, torch.full_like(scores, float("inf"))).flatten()
    order = torch.argsort(flat_scores, stable=True)[:count]
    new.view(-1)[order] = False
    return new


def prune_layerwise(
    weights: Mapping[str, Tensor],
    mask: Mapping[str, Tensor],
    layers: list[PrunableLayer],
    rates: LayerRates,
) -> Mask:
    """Remove ``layer_rate`` of each layer's survivors, smallest magnitudes first."""
    by_key = {layer.key: layer for layer in layers}
    new: Mask = {}
    for key, alive in mask.items():
        alive_count = int(alive.sum())
        count = round(layer_rate(by_key[key], rates) * alive_count)
        new[key] = _prune_smallest(weights[key].detach().abs().cpu(), alive.cpu(), count)
    return new


def prune_global(weights: Mapping[str, Tensor], mask: Mapping[str, Tensor], rate: float) -> Mask:
    """Remove ``rate`` of all survivors under one magnitude threshold across every masked layer."""
    keys = list(mask)
    scores = torch.cat([weights[k].detach().abs().cpu().flatten() for k in keys])
    alive = torch.cat([mask[k].cpu().flatten() for k in keys])
    count = round(rate * int(alive.sum()))
    flat = _prune_smallest(scores, alive, count)
    return _split(flat, mask)


def prune_to_density(
    weights: Mapping[str, Tensor],
    mask: Mapping[str, Tensor],
    layers: list[PrunableLayer],
    target: float,
    *,
    strategy: str,
    rates: LayerRates,
) -> Mask:
    """One-shot pruning straight to ``target`` density.

    Global: one threshold keeps ``target`` of all weights. Layer-wise: the per-layer rates are
    scaled by a common factor (found by bisection) so the layers keep their relative rates.
    """
    total = sum(m.numel() for m in mask.values())
    keep = round(target * total)
    if strategy == "global":
        survivors = sum(int(m.sum()) for m in mask.values())
        return prune_global(weights, mask, 1 - keep / survivors if survivors else 0.0)
    by_key = {layer.key: layer for layer in layers}
    base = {key: layer_rate(by_key[key], rates) for key in mask}
    max_scale = 1 / max(max(base.values()), 1e-12)

    def kept(scale: float) -> int:
        return sum(round((1 - min(base[k] * scale, 1.0)) * int(m.sum())) for k, m in mask.items())

    low, high = 0.0, max_scale
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if kept(mid) > keep else (low, mid)
    scaled = {k: min(base[k] * high, 1.0) for k in mask}
    new: Mask = {}
    for key, alive in mask.items():
        count = round(scaled[key] * int(alive.sum()))
        new[key] = _prune_smallest(weights[key].detach().abs().cpu(), alive.cpu(), count)
    return new


def random_mask_like(mask: Mapping[str, Tensor], generator: torch.Generator) -> Mask:
    """A random mask with exactly the same number of survivors in every layer (the control)."""
    new: Mask = {}
    for key, alive in mask.items():
        count = int(alive.sum())
        flat = torch.zeros(alive.numel(), dtype=torch.bool)
        flat[torch.randperm(alive.numel(), generator=generator)[:count]] = True
        new[key] = flat.view_as(alive)
    return new


def _split(flat: Tensor, like: Mapping[str, Tensor]) -> Mask:
    out: Mask = {}
    offset = 0
    for key, m in like.items():
        out[key] = flat[offset : offset + m.numel()].view_as(m).clone()
        offset += m.numel()
    return out
