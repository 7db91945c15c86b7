"""Grow a trained :class:`~mrisr.networks.SR3UNet` into a wider one that computes the same function.

Each feature channel of the network is copied ``factor`` times (function-preserving widening,
Net2WiderNet, Chen et al. 2016): a layer reading a copied channel splits that channel's weight
among the copies, so their sum is the original weight and the wider network's output equals the
narrow one's. The splits are random (their sum is still exact), so the copies receive different
gradients from the first step on and do not stay copies: training then uses the added capacity
from the narrow model's accuracy instead of from scratch.

What keeps the function exact in this UNet:

* GroupNorm has a fixed number of channels *per group*: the copies of a group form whole groups
  of their own, with the same statistics as the original group.
* The noise-level embedding is sinusoidal over ``channels[0]`` frequencies; the narrow network's
  frequencies are every ``factor``-th of the wide one's, and the others get zero weights.
* Self-attention's dot products grow ``factor`` times with the copies, and ``scaled_dot_product_
  attention`` divides by the square root of the channels: the query weights are divided by
  ``sqrt(factor)``, and the key weights carry the random split (mean 1) so that queries and
  keys do not stay copies either.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from mrisr.networks.sr3_unet import SR3UNet, _Attention, _ResBlock

__all__ = ["widen_network", "widened_config"]


class _Space:
    """The channels of one feature tensor of the wide network: ``index[i]`` is the narrow channel
    that wide channel ``i`` copies (``-1``: none, it starts at zero), ``size`` the narrow count."""

    def __init__(self, index: torch.Tensor, size: int) -> None:
        self.index = index
        self.size = size

    @classmethod
    def copies(cls, channels: int, factor: int) -> _Space:
        return cls(torch.arange(channels * factor) % channels, channels)

    @classmethod
    def identity(cls, channels: int) -> _Space:
        return cls(torch.arange(channels), channels)

    def __add__(self, other: _Space) -> _Space:  # concatenation along channels
        shifted = torch.where(other.index >= 0, other.index + self.size, other.index)
        return _Space(torch.cat([self.index, shifted]), self.size + other.size)

    def counts(self) -> torch.Tensor:
        """How many wide channels copy each narrow one."""
        valid = self.index[self.index >= 0]
        return torch.bincount(valid, minlength=self.size)


def widened_config(network: dict, factor: int) -> dict:
    """The network config of the widened model: every level's channels times ``factor``."""
    if not isinstance(factor, int) or factor < 1:
        raise ValueError(f"the widening factor must be a whole number >= 1, got {factor!r}")
    out = dict(network)
    out["channels"] = [int(c) * factor for c in network["channels"]]
    if out.get("embedding_dim"):
        out["embedding_dim"] = int(out["embedding_dim"]) * factor
    return out


class _Widener:
    def __init__(self, factor: int, jitter: float, generator: torch.Generator) -> None:
        self.factor = factor
        self.jitter = jitter
        self.generator = generator

    def split(self, shape: tuple[int, ...], space: _Space) -> torch.Tensor:
        """Factors along dim 1 (inputs) that sum to 1 over the copies of each narrow channel, for
        each output and kernel position; mean ``1 / copies``, spread ``jitter``."""
        noise = torch.rand(shape, generator=self.generator) * 2 - 1
        valid = space.index >= 0
        idx = space.index.clamp(min=0)
        along_inputs = (1, -1, *([1] * (len(shape) - 2)))  # a per-input vector broadcast over the rest
        counts = space.counts().clamp(min=1).to(noise.dtype)
        # the mean of the noise over the copies of each narrow channel, subtracted: sums stay exact
        sums = torch.zeros((shape[0], space.size, *shape[2:]), dtype=noise.dtype)
        sums.index_add_(1, idx[valid], noise[:, valid])
        noise = noise - (sums / counts.view(along_inputs))[:, idx]
        factors = (1 + self.jitter * noise) / counts[idx].view(along_inputs)
        return factors * valid.view(along_inputs).to(noise.dtype)

    def layer(self, narrow: nn.Module, wide: nn.Module, space_in: _Space, space_out: _Space) -> None:
        """A convolution or linear layer from ``space_in`` to ``space_out``."""
        w = narrow.weight.detach()
        rows = w[space_out.index]
        full = rows[:, space_in.index.clamp(min=0)]
        wide.weight.copy_(full * self.split(tuple(full.shape), space_in))
        if narrow.bias is not None:
            wide.bias.copy_(narrow.bias.detach()[space_out.index])

    @staticmethod
    def norm(narrow: nn.GroupNorm, wide: nn.GroupNorm, space: _Space) -> None:
        per_group = narrow.num_channels // narrow.num_groups
        if wide.num_channels // wide.num_groups != per_group:
            raise ValueError("the wide network's GroupNorm must keep the channels per group")
        # every wide group must copy one whole narrow group, so that its statistics are the same
        for g in range(wide.num_groups):
            members = space.index[g * per_group:(g + 1) * per_group].sort().values
            first = int(members[0])
            if first < 0 or first % per_group or not torch.equal(members, torch.arange(first, first + per_group)):
                raise ValueError("cannot widen this network exactly: a GroupNorm group would mix "
                                 "channels of different narrow groups")
        wide.weight.copy_(narrow.weight.detach()[space.index])
        wide.bias.copy_(narrow.bias.detach()[space.index])

    def resblock(self, narrow: _ResBlock, wide: _ResBlock, space_in: _Space, emb: _Space) -> _Space:
        space_out = _Space.copies(narrow.conv1.out_channels, self.factor)
        self.norm(narrow.norm1, wide.norm1, space_in)
        self.layer(narrow.conv1, wide.conv1, space_in, space_out)
        self.layer(narrow.emb, wide.emb, emb, space_out)
        self.norm(narrow.norm2, wide.norm2, space_out)
        self.layer(narrow.conv2, wide.conv2, space_out, space_out)
        if isinstance(narrow.skip, nn.Identity):
            if not torch.equal(space_in.index, space_out.index):
                raise ValueError("cannot widen this network exactly: an identity skip joins different channels")
        else:
            self.layer(narrow.skip, wide.skip, space_in, space_out)
        return space_out

    def attention(self, narrow: _Attention, wide: _Attention, space: _Space) -> _Space:
        self.norm(narrow.norm, wide.norm, space)
        c = narrow.proj.in_features
        # qkv's inputs are `space`; its outputs are (q, k, v), each copied like `space`
        qkv_out = _Space(torch.cat([space.index + part * c for part in range(3)]), 3 * c)
        self.layer(narrow.qkv, wide.qkv, space, qkv_out)
        n = space.index.numel()
        scale = torch.ones(3 * n)
        scale[:n] = 1 / math.sqrt(self.factor)
        # keys: factors of mean 1 over each channel's copies (their sum, `factor`, is what the
        # query's 1 / sqrt(factor) and the wider attention's 1 / sqrt(channels) cancel)
        scale[n:2 * n] = self.split((1, n), space)[0] * space.counts()[space.index].to(scale.dtype)
        wide.qkv.weight.mul_(scale[:, None])
        wide.qkv.bias.mul_(scale)
        self.layer(narrow.proj, wide.proj, space, space)
        return space

    def run(self, narrow: nn.Module, wide: nn.Module, space: _Space, emb: _Space) -> _Space:
        if isinstance(narrow, _ResBlock):
            return self.resblock(narrow, wide, space, emb)
        if isinstance(narrow, _Attention):
            return self.attention(narrow, wide, space)
        if isinstance(narrow, nn.Upsample):
            return space
        # the down- and upsampling convolutions keep their channels
        self.layer(narrow, wide, space, space)
        return space


@torch.no_grad()
def widen_network(narrow: SR3UNet, config: dict, factor: int = 2, jitter: float = 0.5,
                  seed: int = 0) -> tuple[SR3UNet, dict]:
    """A network ``factor`` times as wide at every level that computes what ``narrow`` computes.

    Args:
        narrow: a trained network (left unchanged).
        config: its keyword arguments (the ``network`` section of a model file).
        factor: channel multiplier (2: the shipped models' 16-32-64-64 becomes the `small` preset's
            32-64-128-128).
        jitter: how unequally a copied channel's weight is split among its copies, in ``[0, 1)``
            (0: equal halves, and the copies would stay copies under training).
        seed: of the random splits.

    Returns:
        The wide network (float32, training mode) and its keyword arguments.

    Raises:
        ValueError: a factor below 1 or a jitter outside ``[0, 1)``.
    """
    if not 0.0 <= jitter < 1.0:
        raise ValueError(f"jitter must be in [0, 1), got {jitter}")
    kwargs = widened_config(config, factor)
    if tuple(int(c) for c in config["channels"]) != narrow.channels:
        raise ValueError(f"config describes channels {list(config['channels'])}, "
                         f"the network has {list(narrow.channels)}")
    narrow = narrow.float()
    wide = SR3UNet(**kwargs)
    g = torch.Generator().manual_seed(seed)
    w = _Widener(factor, jitter, g)

    base = narrow.base_embedding
    half = base // 2
    sinus = torch.full((base * factor,), -1, dtype=torch.long)
    sinus[torch.arange(half) * factor] = torch.arange(half)                     # sin(f_j) at wide k*j
    sinus[half * factor + torch.arange(half) * factor] = half + torch.arange(half)  # cos(f_j)
    emb_hidden = _Space.copies(narrow.embed[0].out_features, factor)
    emb_out = _Space.copies(narrow.embed[2].out_features, factor)
    w.layer(narrow.embed[0], wide.embed[0], _Space(sinus, base), emb_hidden)
    w.layer(narrow.embed[2], wide.embed[2], emb_hidden, emb_out)

    space = _Space.copies(narrow.stem.out_channels, factor)
    w.layer(narrow.stem, wide.stem, _Space.identity(narrow.in_channels), space)
    skips = [space]
    for nb, wb in zip(narrow.down, wide.down):
        for nm, wm in zip(nb, wb):
            space = w.run(nm, wm, space, emb_out)
        skips.append(space)
    for nm, wm in zip(narrow.mid, wide.mid):
        space = w.run(nm, wm, space, emb_out)
    for nb, wb in zip(narrow.up, wide.up):
        space = space + skips.pop()
        for nm, wm in zip(nb, wb):
            space = w.run(nm, wm, space, emb_out)
    w.norm(narrow.out[0], wide.out[0], space)
    w.layer(narrow.out[2], wide.out[2], space, _Space.identity(narrow.out_channels))
    return wide.train(), kwargs
