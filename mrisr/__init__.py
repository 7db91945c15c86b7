"""mrisr: MRI super-resolution with Partial Diffusion Models (PartDiff).

Layers, lowest first (imports only point down): ``errors``, ``devices`` (device and precision
choices), ``io``, ``geometry``, ``interpolation``, ``degradation``, ``evaluation`` (volumes
with their affine, plane and axis logic, classical resampling, simulated acquisitions,
metrics); ``transforms`` (MONAI-style pairs and intensity); ``networks``; ``diffusion``
(schedules, objectives, samplers, the inferer); ``models`` (model files and the shipped
registry); ``data`` (datalists, plane banks, pair batches); ``inference``, ``training`` and
``analysis`` (orchestration); ``cli``. Import submodules directly; this package
module stays light so that ``mrisr --help`` is instant.
"""

__version__ = "0.1.0"
