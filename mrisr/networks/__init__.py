"""Networks (nn.Modules only)."""

from mrisr.networks.presets import PRESETS, network_config
from mrisr.networks.sr3_unet import SR3UNet, noise_level_embedding

__all__ = ["SR3UNet", "noise_level_embedding", "PRESETS", "network_config"]
