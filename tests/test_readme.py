"""Documentation drift fails a test: the README's Python examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_python_examples_run(index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    # Examples write to /tmp/demo.db for readability; here each one gets a private file instead.
    code = python_blocks()[index].replace("/tmp/demo.db", str(tmp_path / "demo.db"))
    exec(compile(code, f"README.md python block {index}", "exec"), {"__name__": "readme_example"})
