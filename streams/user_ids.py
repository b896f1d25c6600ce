"""User ids: one rule for every place a user id enters hhh.

A user id names a caller (the ``user`` field of API requests with auth off, the user an API key
acts as), a labeler, the owner of a personal adapter (scope ``user:<id>``, stored in the folder
``user/<id>/`` of the adapter store) and the key of the ``feedback`` topic. Because it becomes a
folder name, the rule is that of a safe file name:

- 1 to ``USER_ID_MAX_LENGTH`` (128) characters from ``USER_ID_ALPHABET``: ASCII letters and
  digits, dot, underscore, at sign and hyphen (so no slash, colon, space or control character);
- not only dots: ``.`` and ``..`` name a folder itself and its parent.

The API request models and the API-key settings (``serving``), the adapter store and the event
schemas (``streams.events``) all check ids with `check_user_id` or the pydantic type `UserId`,
so an id the API accepts is one every later stage accepts too, and an event carrying any other
id fails its schema (a dead letter, never a crash downstream).
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field
from pydantic_core import PydanticCustomError

from common.errors import UserError

USER_ID_ALPHABET = "A-Za-z0-9._@-"
"""The characters of a user id, as a regex character class."""

USER_ID_MAX_LENGTH = 128
"""The longest user id, in characters."""

_OUTSIDE_ALPHABET = re.compile(f"[^{USER_ID_ALPHABET}]")
_RULE = f"1-{USER_ID_MAX_LENGTH} characters of A-Z a-z 0-9 . _ @ -, not only dots"


class InvalidUserId(UserError):
    """A user id that breaks the rule of this module; the message says which part and why."""


def user_id_problem(value: str) -> str | None:
    """Why ``value`` is not a valid user id, or None if it is one."""
    if not value:
        return f"a user id cannot be empty ({_RULE})"
    if len(value) > USER_ID_MAX_LENGTH:
        return (f"user id {value[:20]!r}… has {len(value)} characters; "
                f"at most {USER_ID_MAX_LENGTH} are allowed")
    if bad := sorted(set(_OUTSIDE_ALPHABET.findall(value))):
        return f"user id {value[:40]!r} contains {''.join(bad)!r}; use only {_RULE}"
    if set(value) == {"."}:
        return f"user id {value!r} is only dots, which names a folder, not a user; use {_RULE}"
    return None


def check_user_id(value: str) -> str:
    """``value`` if it is a valid user id; `InvalidUserId` saying what is wrong otherwise."""
    if (problem := user_id_problem(value)) is not None:
        raise InvalidUserId(problem)
    return value


def _validate(value: str) -> str:
    if (problem := user_id_problem(value)) is not None:
        raise PydanticCustomError("invalid_user_id", "{problem}", {"problem": problem})
    return value


UserId = Annotated[
    str,
    AfterValidator(_validate),
    Field(json_schema_extra={
        "pattern": rf"^(?!\.+$)[{USER_ID_ALPHABET}]{{1,{USER_ID_MAX_LENGTH}}}$",
        "maxLength": USER_ID_MAX_LENGTH,
    }),
]
"""A user id as a pydantic field type: validation errors carry `user_id_problem`'s sentence."""
