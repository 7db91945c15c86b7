"""The SR3-style UNet of PartDiff, written in MONAI's style.

MONAI's ``DiffusionModelUNet`` cannot express the paper's design: it normalises with a fixed
*number* of groups, while PartDiff fixes the number of *channels per group* (16, Sec. 5.1.1),
and it embeds integer timesteps where PartDiff conditions on the continuous noise level.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.layers.factories import Conv

__all__ = ["SR3UNet", "noise_level_embedding"]


def noise_level_embedding(noise_level: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    """Sinusoidal embedding of a continuous noise level (SR3 / WaveGrad).

    Args:
        noise_level: ``(B,)`` values ``sqrt(alpha_bar)`` in ``[0, 1]``.
        dim: embedding size (even).
        scale: the level is multiplied by this before the sinusoids, so levels that differ by
            ``1e-3`` still get distinct embeddings.

    Returns:
        ``(B, dim)``.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=noise_level.device, dtype=torch.float32) / half)
    args = scale * noise_level.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


def _groups(channels: int, channels_per_group: int) -> int:
    if channels % channels_per_group != 0:
        raise ValueError(f"channels ({channels}) must be a multiple of channels_per_group ({channels_per_group})")
    return channels // channels_per_group


class _ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, plus the noise-level embedding, twice, with a skip."""

    def __init__(self, spatial_dims: int, in_ch: int, out_ch: int, emb_dim: int, cpg: int, dropout: float) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        self.norm1 = nn.GroupNorm(_groups(in_ch, cpg), in_ch)
        self.conv1 = conv(in_ch, out_ch, kernel_size=3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch)
        self.norm2 = nn.GroupNorm(_groups(out_ch, cpg), out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv(out_ch, out_ch, kernel_size=3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity
        nn.init.zeros_(self.conv2.bias)
        self.skip = conv(in_ch, out_ch, kernel_size=1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb)).view(*emb.shape[:1], -1, *([1] * (x.ndim - 2)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class _Attention(nn.Module):
    """Single-head spatial self-attention (as in DDPM / SR3) with a residual connection."""

    def __init__(self, channels: int, cpg: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels, cpg), channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        h = self.norm(x).reshape(b, c, -1).transpose(1, 2)  # (B, N, C)
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        h = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(h).transpose(1, 2).reshape(x.shape)


class SR3UNet(nn.Module):
    """Noise-predicting UNet conditioned on a low-resolution image and the noise level.

    The network sees the bicubic-upsampled low-resolution image concatenated with the noisy
    high-resolution image along channels, is conditioned on the continuous noise level
    ``sqrt(alpha_bar)`` and predicts the noise (SR3, Saharia et al. 2021; PartDiff, Zhao et
    al., Sec. 3.3 and 5.1.1, Table 1). GroupNorm uses a fixed number of channels per group.

    Args:
        spatial_dims: 2 (slices) or 3.
        in_channels: channels of the concatenated input (condition + noisy image), e.g. 2.
        out_channels: channels predicted, e.g. 1.
        channels: feature channels of each resolution level, e.g. ``(128, 128, 256, 256, 512,
            512)`` for the paper's MRI model (base 128, multipliers 1, 1, 2, 2, 4, 4).
        num_res_blocks: residual blocks per level.
        attention_levels: per level, whether its blocks end with self-attention.
        channels_per_group: GroupNorm channels per group (16 in the paper).
        dropout: dropout inside residual blocks.
        embedding_dim: size of the noise-level embedding (default ``4 * channels[0]``).

    Any input size works: inputs are padded to a multiple of ``2 ** (len(channels) - 1)`` and
    the output is cropped back.
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 2, out_channels: int = 1,
                 channels: Sequence[int] = (32, 64, 128, 128), num_res_blocks: int = 2,
                 attention_levels: Sequence[bool] | None = None, channels_per_group: int = 16,
                 dropout: float = 0.0, embedding_dim: int | None = None) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"in_channels and out_channels must be >= 1, got {in_channels}, {out_channels}")
        channels = tuple(int(c) for c in channels)
        if len(channels) < 1:
            raise ValueError("channels must name at least one level")
        for c in channels:
            _groups(c, channels_per_group)
        if num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1, got {num_res_blocks}")
        attention = tuple(attention_levels) if attention_levels is not None else (False,) * len(channels)
        if len(attention) != len(channels):
            raise ValueError(f"attention_levels has {len(attention)} entries, channels has {len(channels)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.channels = channels
        self.multiple = 2 ** (len(channels) - 1)
        emb_dim = embedding_dim or 4 * channels[0]
        self.base_embedding = channels[0]
        conv = Conv[Conv.CONV, spatial_dims]

        self.embed = nn.Sequential(nn.Linear(channels[0], emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.stem = conv(in_channels, channels[0], kernel_size=3, padding=1)

        self.down = nn.ModuleList()
        skips = [channels[0]]
        ch = channels[0]
        for level, out_ch in enumerate(channels):
            for _ in range(num_res_blocks):
                block = nn.ModuleList([_ResBlock(spatial_dims, ch, out_ch, emb_dim, channels_per_group, dropout)])
                if attention[level]:
                    block.append(_Attention(out_ch, channels_per_group))
                self.down.append(block)
                ch = out_ch
                skips.append(ch)
            if level < len(channels) - 1:
                self.down.append(nn.ModuleList([conv(ch, ch, kernel_size=3, stride=2, padding=1)]))
                skips.append(ch)

        self.mid = nn.ModuleList([
            _ResBlock(spatial_dims, ch, ch, emb_dim, channels_per_group, dropout),
            _Attention(ch, channels_per_group),
            _ResBlock(spatial_dims, ch, ch, emb_dim, channels_per_group, dropout),
        ])

        self.up = nn.ModuleList()
        for level in reversed(range(len(channels))):
            out_ch = channels[level]
            for i in range(num_res_blocks + 1):
                block = nn.ModuleList([_ResBlock(spatial_dims, ch + skips.pop(), out_ch, emb_dim,
                                                 channels_per_group, dropout)])
                if attention[level]:
                    block.append(_Attention(out_ch, channels_per_group))
                ch = out_ch
                if level > 0 and i == num_res_blocks:
                    block.append(nn.Upsample(scale_factor=2, mode="nearest"))
                    block.append(conv(ch, ch, kernel_size=3, padding=1))
                self.up.append(block)

        self.out = nn.Sequential(nn.GroupNorm(_groups(ch, channels_per_group), ch), nn.SiLU(),
                                 conv(ch, out_channels, kernel_size=3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def _run(self, module: nn.Module, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return module(h, emb) if isinstance(module, _ResBlock) else module(h)

    def forward(self, x: torch.Tensor, noise_level: torch.Tensor) -> torch.Tensor:
        """Predict the noise.

        Args:
            x: ``(B, in_channels, H, W[, D])``: condition and noisy image concatenated.
            noise_level: ``(B,)`` continuous noise levels ``sqrt(alpha_bar)`` (or one for all).

        Returns:
            ``(B, out_channels, H, W[, D])``.
        """
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected (B, {self.in_channels}, spatial x{self.spatial_dims}), got {tuple(x.shape)}")
        noise_level = torch.as_tensor(noise_level, device=x.device).reshape(-1)  # a number works too
        if noise_level.numel() == 1 and x.shape[0] > 1:
            noise_level = noise_level.expand(x.shape[0])
        size = x.shape[2:]
        pads = []
        for n in reversed(size):
            pads += [0, (-n) % self.multiple]
        if any(pads):
            x = F.pad(x, pads, mode="replicate" if x.ndim <= 5 else "constant")
        emb = self.embed(noise_level_embedding(noise_level, self.base_embedding).to(x.dtype))
        h = self.stem(x)
        hs = [h]
        for block in self.down:
            for module in block:
                h = self._run(module, h, emb)
            hs.append(h)
        for module in self.mid:
            h = self._run(module, h, emb)
        for block in self.up:
            h = torch.cat([h, hs.pop()], dim=1)
            for module in block:
                h = self._run(module, h, emb)
        h = self.out(h)
        return h[(..., *(slice(0, n) for n in size))]
