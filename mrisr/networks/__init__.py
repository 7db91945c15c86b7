"""Networks (nn.Modules only)."""

from mrisr.networks.presets import PRESETS, network_config
from mrisr.networks.sr3_unet import SR3UNet, noise_level_embedding
from mrisr.networks.widen import widen_network, widened_config

__all__ = ["SR3UNet", "noise_level_embedding", "PRESETS", "network_config", "widen_network", "widened_config"]
