"""Request bodies whose text can be logged: every string must be encodable as UTF-8.

JSON may carry ``"\\ud800"``, a lone UTF-16 surrogate: Python's ``json`` parses it into a ``str``
that no UTF-8 encoder accepts, so the completion event carrying it could never be written and
would be lost after the caller got its completion ids. `EncodableRequest` refuses such a body
before anything happens (a 400 that names the field and the character), instead.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, model_validator
from pydantic_core import PydanticCustomError


def unencodable_text(document: Any) -> str | None:
    """Where ``document`` (parsed JSON) holds a string UTF-8 cannot encode, and which character;
    None if it holds none. Walks without recursion, so any depth is safe."""
    pending: list[tuple[str, Any]] = [("", document)]
    while pending:
        where, value = pending.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as error:
                return (f"{where or 'body'}: character {error.start} is a lone surrogate "
                        f"(U+{ord(value[error.start]):04X}), which is not text; send valid Unicode "
                        "(a surrogate pair, or the character itself)")
        elif isinstance(value, dict):
            for key, item in value.items():
                pending.append((f"{where}.{key}".lstrip("."), key))
                pending.append((f"{where}.{key}".lstrip("."), item))
        elif isinstance(value, list):
            pending.extend((f"{where}.{index}".lstrip("."), item) for index, item in enumerate(value))
    return None


class EncodableRequest(BaseModel):
    """A request model that refuses a body holding text UTF-8 cannot encode (see the module)."""

    @model_validator(mode="before")
    @classmethod
    def _text_is_encodable(cls, data: Any) -> Any:
        if (problem := unencodable_text(data)) is not None:
            raise PydanticCustomError("unencodable_text", "{problem}", {"problem": problem})
        return data
