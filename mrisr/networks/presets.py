"""Named network configurations: the paper's (Table 1) and small ones for CPU training."""

from __future__ import annotations

from typing import Any

from mrisr.errors import ConfigError

__all__ = ["PRESETS", "network_config"]

PRESETS: dict[str, dict[str, Any]] = {
    # Table 1, MRI: base 128, multipliers {1, 1, 2, 2, 4, 4}, 3 residual blocks; attention at
    # the two coarsest levels (SR3 attends at 16x16 and below).
    "paper-mri": {"channels": (128, 128, 256, 256, 512, 512), "num_res_blocks": 3,
                  "attention_levels": (False, False, False, False, True, True)},
    # Table 1, RGB at 128 and 256: the MRI network's shape (give in_channels 6 / out_channels 3, or
    # let `mrisr train` set them from data.channels)
    "paper-rgb": {"channels": (128, 128, 256, 256, 512, 512), "num_res_blocks": 3,
                  "attention_levels": (False, False, False, False, True, True)},
    # Table 1, RGB 512: base 64, multipliers {1, 1, 2, 2, 4, 4, 8, 8}, 2 residual blocks.
    "paper-rgb512": {"channels": (64, 64, 128, 128, 256, 256, 512, 512), "num_res_blocks": 2,
                     "attention_levels": (False,) * 6 + (True, True)},
    # CPU presets: what a 2-core machine can train in hours (see docs/models.md).
    "small": {"channels": (32, 64, 128, 128), "num_res_blocks": 2,
              "attention_levels": (False, False, False, True)},
    "tiny": {"channels": (16, 32, 32), "num_res_blocks": 1, "attention_levels": (False, False, False)},
}


def network_config(preset: str | None = None, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments of :class:`~mrisr.networks.SR3UNet` for a preset, with overrides.

    Raises:
        ConfigError: unknown preset name.
    """
    base: dict[str, Any] = {"spatial_dims": 2, "in_channels": 2, "out_channels": 1, "channels_per_group": 16}
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown network preset {preset!r}; available: {', '.join(PRESETS)}")
        base.update(PRESETS[preset])
    base.update(overrides)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in base.items()}
