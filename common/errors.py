"""The error a user can fix, as opposed to a bug.

Raise `UserError` for bad arguments, bad settings or missing inputs, with a message that says
what to fix. The CLI (`hhh.cli`) prints it in one line; any other exception is a bug and keeps
its traceback.
"""

from __future__ import annotations


class UserError(ValueError):
    """Something the caller got wrong; the message says what to change.

    A `ValueError`, so that code which refuses bad values (an API mapping them to 4xx, say)
    treats it like any other bad value.
    """
