"""A JSON file read as its top-level object, one array member element by element.

An export of a million entries is about 450 MB of text; parsed whole it took 2-3 KiB per entry. Here
the file is read in chunks, every top-level member is parsed whole except one array (``entries``),
whose elements are parsed and handed out one at a time, in file order (the export writes its keys
sorted, so ``entries`` comes before the small sections). Errors carry the line and column in the
whole file, as :func:`json.loads` would report them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any, TextIO

_CHUNK = 1 << 20
_WHITESPACE = " \t\n\r"


class Member:
    """A top-level member parsed whole."""

    __slots__ = ("key", "value")

    def __init__(self, key: str, value: Any) -> None:
        self.key = key
        self.value = value


class Element:
    """One element of the streamed array, with its position in it."""

    __slots__ = ("index", "value")

    def __init__(self, index: int, value: Any) -> None:
        self.index = index
        self.value = value


class NotAnObject(ValueError):
    """The document's top level is not a JSON object (the caller reads it whole instead)."""


class DuplicateMember(ValueError):
    """A top-level key appears twice."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def members(handle: TextIO, streamed: str, object_pairs_hook: Callable[[list[tuple[str, Any]]], Any]
            ) -> Iterator[Member | Element]:
    """The top-level members of the object in ``handle`` in file order; the array under ``streamed``
    comes as its :class:`Element` items instead (a non-array value there comes as a Member).

    Raises :class:`json.JSONDecodeError` (positions in the whole file), :class:`NotAnObject`,
    :class:`DuplicateMember`, and whatever ``object_pairs_hook`` raises.
    """
    reader = _Reader(handle, json.JSONDecoder(object_pairs_hook=object_pairs_hook))
    if reader.peek() != "{":
        if reader.peek() == "":
            reader.fail("Expecting value")
        raise NotAnObject
    reader.take()
    seen: set[str] = set()
    if reader.peek() == "}":
        reader.take()
        reader.end()
        return
    while True:
        if reader.peek() != '"':
            reader.fail("Expecting property name enclosed in double quotes")
        key = reader.value()
        if key in seen:
            raise DuplicateMember(key)
        seen.add(key)
        if reader.peek() != ":":
            reader.fail("Expecting ':' delimiter")
        reader.take()
        if key == streamed and reader.peek() == "[":
            reader.take()
            index = 0
            if reader.peek() == "]":
                reader.take()
            else:
                while True:
                    yield Element(index, reader.value())
                    index += 1
                    if reader.peek() == "]":
                        reader.take()
                        break
                    if reader.peek() != ",":
                        reader.fail("Expecting ',' delimiter")
                    reader.take()
        else:
            yield Member(key, reader.value())
        if reader.peek() == "}":
            reader.take()
            reader.end()
            return
        if reader.peek() != ",":
            reader.fail("Expecting ',' delimiter")
        reader.take()


class _Reader:
    """A window on the file: ``buf[pos:]`` is what is not consumed yet; earlier text is dropped."""

    def __init__(self, handle: TextIO, decoder: json.JSONDecoder) -> None:
        self._handle = handle
        self._decoder = decoder
        self._buf = ""
        self._pos = 0
        self._eof = False
        self._lines = 0  # newlines in the text dropped so far
        self._column = 0  # characters after the last dropped newline

    def _more(self) -> bool:
        if self._eof:
            return False
        chunk = self._handle.read(_CHUNK)
        if not chunk:
            self._eof = True
            return False
        dropped = self._buf[:self._pos]
        newlines = dropped.count("\n")
        self._lines += newlines
        self._column = len(dropped) - dropped.rfind("\n") - 1 if newlines else self._column + len(dropped)
        self._buf = self._buf[self._pos:] + chunk
        self._pos = 0
        return True

    def peek(self) -> str:
        """The next character that is not whitespace ("" at the end of the file), not consumed."""
        while True:
            buf, pos = self._buf, self._pos
            while pos < len(buf) and buf[pos] in _WHITESPACE:
                pos += 1
            self._pos = pos
            if pos < len(buf):
                return buf[pos]
            if not self._more():
                return ""

    def take(self) -> None:
        self._pos += 1

    def value(self) -> Any:
        """Parse one JSON value at the current position (reading more of the file while it is cut off)."""
        self.peek()
        while True:
            try:
                value, end = self._decoder.raw_decode(self._buf, self._pos)
            except json.JSONDecodeError as error:
                # Cut off by the end of the window, or broken: only the end of the file tells.
                if self._more():
                    continue
                self.fail(error.msg, error.pos)
            if end == len(self._buf) and not self._eof and isinstance(value, (int, float)):
                # a number may go on in the next chunk
                if self._more():
                    continue
            self._pos = end
            return value

    def end(self) -> None:
        if self.peek() != "":
            self.fail("Extra data")

    def fail(self, message: str, at: int | None = None) -> Any:
        pos = self._pos if at is None else at
        newlines = self._buf.count("\n", 0, pos)
        line = self._lines + newlines + 1
        column = (pos - self._buf.rfind("\n", 0, pos) if newlines else self._column + pos + 1)
        error = json.JSONDecodeError(message, "", 0)
        error.lineno, error.colno, error.pos = line, column, pos
        raise error
