"""`Secret`: a decrypted value that prints as `[REDACTED]` everywhere; `.reveal()` is the only way out."""

from __future__ import annotations

import hmac
from typing import Any, NoReturn, final

REDACTED = "[REDACTED]"


@final
class Secret:
    """A secret value. str(), repr(), format() and f-strings show `[REDACTED]`.

    It is deliberately not a `str` subclass, so `json.dumps`, string concatenation and `"".join` fail
    instead of leaking; it cannot be pickled or copied into a `__dict__`. Call `.reveal()` at the one
    place the plain value must go (a file written 0600, an SSH channel's stdin).
    """

    __slots__ = ("__value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("Secret wraps a str")
        # Name-mangled slot: `secret._value` does not exist, so a careless attribute dump shows nothing.
        self.__value = value

    def reveal(self) -> str:
        """The plain value. Never log, print or put it in an argument list."""
        return self.__value

    def __repr__(self) -> str:
        return REDACTED

    def __str__(self) -> str:
        return REDACTED

    def __format__(self, format_spec: str) -> str:
        return format(REDACTED, format_spec)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        # Constant time, so comparing secrets leaks nothing through timing.
        return hmac.compare_digest(self.__value.encode(), other.__value.encode())

    def __ne__(self, other: object) -> bool:
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    __hash__ = None  # type: ignore[assignment]  # equality by value, but never a dict key

    def __bool__(self) -> bool:
        return bool(self.__value)

    def __reduce__(self) -> NoReturn:
        raise TypeError("a Secret cannot be pickled")

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        raise TypeError("a Secret cannot be pickled")

    def __copy__(self) -> Secret:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Secret:
        return self
