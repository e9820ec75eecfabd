"""Exception and warning types raised by diffcal.

Every class derives from a built-in exception as well (ValueError, TypeError, LookupError,
RuntimeError) so callers that catch the built-in still catch ours.
"""

from __future__ import annotations

__all__ = [
    "DiffcalError",
    "FitsFormatError",
    "UnknownMaskPlaneError",
    "MaskPlaneLimitError",
    "InconsistentXy0Warning",
]


class DiffcalError(Exception):
    """Base class of every diffcal-specific exception."""


class FitsFormatError(DiffcalError, ValueError):
    """A FITS file is corrupt, truncated, or not in the layout diffcal expects."""


class UnknownMaskPlaneError(DiffcalError, LookupError):
    """A mask plane name is not defined in the mask's plane dictionary."""

    def __str__(self) -> str:  # LookupError would otherwise repr() the message
        return str(self.args[0]) if self.args else ""


class MaskPlaneLimitError(DiffcalError, RuntimeError):
    """A new mask plane was requested but all 32 bits of the int32 mask are already in use."""


class InconsistentXy0Warning(UserWarning):
    """The planes of a FITS masked image disagree about the pixel origin (xy0)."""
