"""mrisr: MRI super-resolution with Partial Diffusion Models (PartDiff).

Layers, lowest first (imports only point down): ``errors``, ``devices`` (device and precision
choices), ``io``, ``images``, ``geometry``, ``interpolation``, ``degradation``, ``metrics``,
``perceptual`` (volumes with their affine, PNG / JPEG images, plane and axis logic, classical
resampling, simulated acquisitions, metrics); ``transforms`` (MONAI-style pairs and
intensity); ``networks``; ``diffusion`` (schedules, objectives, samplers and their
``SamplingPlan``, the inferer); ``models`` (model files and the shipped registry); ``data``
(datalists, plane and image banks, pair batches); ``inference``, ``training`` (a package:
``config``, ``trainer``, ``checkpoints``, ``validation``, ``logs``), ``analysis``,
``comparison`` and ``natural`` (orchestration); ``cli``. Import submodules directly; this package
module stays light so that ``mrisr --help`` is instant.
"""

__version__ = "0.1.0"
