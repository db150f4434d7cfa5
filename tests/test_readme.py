"""Documentation drift fails a test: the README's Python examples run as written, twice in a row (a
newcomer runs a snippet again), and its Performance section is what the kept bench run printed."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_python_examples_run_twice(index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    # Examples write to /tmp/demo.db for readability; here each one gets a private file instead.
    code = python_blocks()[index].replace("/tmp/demo.db", str(tmp_path / "demo.db"))
    compiled = compile(code, f"README.md python block {index}", "exec")
    for _ in range(2):  # the second run meets what the first one left
        exec(compiled, {"__name__": "readme_example"})


def test_the_performance_section_is_the_kept_bench_run() -> None:
    spec = importlib.util.spec_from_file_location("bench_report", ROOT / "scripts" / "bench_report.py")
    assert spec is not None and spec.loader is not None
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    kept = json.loads((ROOT / "scripts" / "bench-result.json").read_text())
    assert not kept.get("quick"), "the README shows a full run"
    assert report.section_of(README.read_text()) == report.render(kept), (
        "README's Performance section is not what scripts/bench-result.json renders: run "
        "python scripts/bench_report.py scripts/bench-result.json --write README.md")
