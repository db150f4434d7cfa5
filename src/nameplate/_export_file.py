"""An export document as text and as a file: the same bytes with or without a progress bar, written
atomically and readable by the owner only (an export holds everything the registry does)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

_HOLE = "\x00entries\x00"


def encode_document(document: dict[str, Any], progress: Callable[[int, int], None] | None = None) -> str:
    """``json.dumps(document, indent=2, sort_keys=True)``, entry by entry so that a bar can follow.

    The text is the same with or without ``progress``: each entry is encoded alone and indented to
    the depth it has in the document.
    """
    entries = document["entries"]
    if not entries:
        return json.dumps(document, indent=2, sort_keys=True)
    items = sorted(entries.items()) if isinstance(entries, dict) else [(None, e) for e in entries]
    parts = []
    for index, (key, value) in enumerate(items):
        if progress is not None and index % 500 == 0:
            progress(index, len(items))
        body = json.dumps(value, indent=2, sort_keys=True).replace("\n", "\n    ")
        parts.append("    " + (f"{json.dumps(key)}: " if key is not None else "") + body)
    if progress is not None:
        progress(len(items), len(items))
    brackets = "{}" if isinstance(entries, dict) else "[]"
    block = f"{brackets[0]}\n" + ",\n".join(parts) + f"\n  {brackets[1]}"
    return json.dumps(dict(document, entries=_HOLE), indent=2, sort_keys=True).replace(json.dumps(_HOLE), block, 1)


def write_private(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a failed export leaves no half file), readable by the
    owner only, as the registry itself: an export holds everything the registry does."""
    with open_private(path) as handle:
        handle.write(text)


@contextmanager
def open_private(path: str) -> Iterator[TextIO]:
    """A text file that becomes ``path`` (created 0600) only when the block ends without an error;
    until then it is a temporary file beside it, removed if anything fails."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, temporary = tempfile.mkstemp(prefix=".nameplate-export-", dir=directory)  # created 0600
    except OSError as error:  # name the file asked for, not the temporary one
        raise OSError(error.errno, f"cannot write there ({error.strerror})", path) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
