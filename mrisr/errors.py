"""The one small hierarchy of errors that mrisr raises for bad input.

The CLI turns every :class:`MrisrError` into a single line on stderr and exit code 2; any
other exception is a bug in mrisr and is reported as such.
"""

from __future__ import annotations

__all__ = ["MrisrError", "InputError", "OutputError", "GeometryError", "ConfigError"]


class MrisrError(Exception):
    """Base class: a problem with what the user asked for, explained in one line."""


class InputError(MrisrError):
    """The input path, file or volume cannot be used (missing, unreadable, wrong shape or values)."""


class OutputError(MrisrError):
    """The output cannot be written where asked (exists, equals the input, folder not writable)."""


class GeometryError(MrisrError):
    """A plane, axis or factor that does not fit the volume or the rules of mrisr.geometry."""


class ConfigError(MrisrError, ValueError):
    """An option or configuration value outside what is allowed (method, device, batch size...).

    Also a ``ValueError``, so code that guards a call with ``except ValueError`` (as for
    MONAI's and PyTorch's own argument checks) catches it too."""
