"""mrisr: MRI super-resolution with Partial Diffusion Models (PartDiff).

Layers, lowest first: ``io`` and ``geometry`` (volumes with their affine, plane and axis
logic), ``interpolation`` (classical cell-centred resampling), ``inference`` (whole-volume
upsampling and the method registry), ``cli``. Import submodules directly; this package
module stays light so that ``mrisr --help`` is instant.
"""

__version__ = "0.1.0"
