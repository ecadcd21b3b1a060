"""The package's one documented error type for bad input.

Nodes catch :class:`InputError`, log it (throttled), count it in /diagnostics and drop the
message; anything else escaping is a bug.
"""


class InputError(ValueError):
    """A message, array or parameter that cannot be used; the text names the offending field."""
