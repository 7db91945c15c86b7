"""The one small hierarchy of errors that mrisr raises for bad input.

The CLI turns every :class:`MrisrError` into a single line on stderr and exit code 2; any
other exception is a bug in mrisr and is reported as such.
"""

from __future__ import annotations

__all__ = ["MrisrError", "InputError", "OutputError", "GeometryError", "ConfigError", "require_int", "first_line"]


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


def require_int(value: object, name: str, minimum: int = 1, maximum: int | None = None,
                error: type[MrisrError] = ConfigError) -> int:
    """``value`` if it is an integer (not a bool) in ``minimum..maximum``, else ``error`` with
    one line: "NAME must be an integer >= MIN, got V" (or "in MIN..MAX"). The one integer check
    of the library (the CLI parses text with the same wording)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or (
            maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
        raise error(f"{name} must be an integer {bound}, got {value!r}")
    return value


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first non-empty line of an exception's message (its type's name when it has none),
    at most ``limit`` characters: what a one-line error quotes of a library's exception."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:limit]
