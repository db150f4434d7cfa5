"""Entry ids made by ``_ids.new_id`` are ULIDs python-ulid reads back to the same time and bytes."""

from __future__ import annotations

import time

from hypothesis import given
from hypothesis import strategies as st
from ulid import ULID

from nameplate import _ids


def test_a_new_id_is_a_ulid_of_now() -> None:
    before = int(time.time() * 1000)
    made = _ids.new_id()
    after = int(time.time() * 1000)
    parsed = ULID.from_str(made)
    assert str(parsed) == made and len(made) == 26
    assert before <= parsed.milliseconds <= after


def test_ids_made_in_one_millisecond_differ_and_sort_by_time() -> None:
    made = [_ids.new_id() for _ in range(2000)]
    assert len(set(made)) == len(made)
    stamps = [ULID.from_str(m).milliseconds for m in made]
    assert stamps == sorted(stamps)


@given(st.integers(min_value=0, max_value=2**48 - 1), st.binary(min_size=10, max_size=10))
def test_the_encoding_is_python_ulids(milliseconds: int, randomness: bytes) -> None:
    raw = milliseconds.to_bytes(6, "big") + randomness
    assert _ids.encode(raw) == str(ULID(raw))
