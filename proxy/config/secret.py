"""A string wrapper that never shows its value by accident."""

from __future__ import annotations

__all__ = ["Secret"]


class Secret:
    """Holds a secret string; ``repr`` and ``str`` print ``'**********'``.

    The value is read explicitly with :meth:`reveal`, so a config object or a
    traceback that prints its fields can never leak the client secret or a key.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The wrapped value; call it only where the secret is really sent."""
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('**********')"

    def __str__(self) -> str:
        return "**********"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)
