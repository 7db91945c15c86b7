"""Default models shipped with mrisr (safetensors files listed in ``registry.json``)."""
