"""The error and warning hierarchy.

Every error raised by exomiri derives from :class:`ExomiriError` and from the
nearest builtin exception, so ``except ValueError`` keeps working for callers
who do not know exomiri.  Messages say what happened, what was expected and
how to fix it.
"""

from __future__ import annotations

__all__ = [
    "DuplicateMethodError",
    "ExomiriError",
    "ExomiriWarning",
    "InputError",
    "PluginError",
    "PluginWarning",
    "SessionFormatError",
    "StepOrderError",
    "UnknownMethodError",
]


class ExomiriError(Exception):
    """Base class of every exomiri error."""


class InputError(ExomiriError, ValueError):
    """A file or an argument is not what the step needs."""


class StepOrderError(ExomiriError, RuntimeError):
    """A step was called before the step that produces what it needs."""


class UnknownMethodError(ExomiriError, LookupError):
    """No background or extraction method has this name."""


class DuplicateMethodError(ExomiriError, LookupError):
    """Two installed distributions register a method under the same name."""


class PluginError(ExomiriError, RuntimeError):
    """A plugin returned something the host cannot use."""


class SessionFormatError(ExomiriError, OSError):
    """A session file is damaged, of an unknown kind, or of a newer format."""


class ExomiriWarning(UserWarning):
    """Base class of exomiri warnings."""


class PluginWarning(ExomiriWarning):
    """A plugin could not be loaded or registered; exomiri goes on without it."""


class DataWarning(ExomiriWarning):
    """Something in the data deserves a look (all-NaN frames, zero errors...)."""


__all__ += ["DataWarning"]
