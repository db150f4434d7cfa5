"""Issue 15, target 4: export and import stream, so their memory stays flat in the registry's size.

Peak memory is measured as the VmHWM of a fresh subprocess (independent of CPU load), once
for a small registry and once for one a hundred times larger: the difference is what the size costs.
"""

from __future__ import annotations

import io
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ulid import ULID

from nameplate import ImportFileError, Registry, _json_stream
from nameplate._export_file import encode_document

from conftest import table_snapshot

# VmHWM, the peak of this address space: ru_maxrss would keep the parent's peak across fork + exec.
_PEAK = """
import sys
from nameplate.cli import main
try:
    main(sys.argv[1:], standalone_mode=False)
finally:
    peak = next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print("PEAK", peak, file=sys.stderr)
"""


def peak_mib(*args: str) -> float:
    """Run the nameplate CLI with ``args`` in a fresh interpreter; its peak RSS in MiB."""
    done = subprocess.run([sys.executable, "-c", _PEAK, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    peak = [line for line in done.stderr.splitlines() if line.startswith("PEAK ")][-1]
    return int(peak.split()[1]) / 1024


def bulk_registry(path: Path, count: int) -> None:
    """A registry of ``count`` node entries, inserted straight into the migrated file (fast)."""
    Registry(path).close()
    conn = sqlite3.connect(path, isolation_level=None)
    now = time.time()
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany("INSERT INTO entry (id, workspace_id, kind_id, name, metadata, capabilities, created_at, "
                     "updated_at, last_seen_at) VALUES (?, 1, 1, ?, ?, ?, ?, ?, ?)",
                     [(str(ULID()), f"n{i:07d}", json.dumps({"url": f"http://host{i}:2000"}), '["llm"]', now, now, now)
                      for i in range(count)])
    conn.execute("COMMIT")
    conn.close()


def test_streamed_export_is_the_text_of_the_document(registry: Registry) -> None:
    registry.create_workspace("dev1")
    registry.define_kind("pipette", required=["max_volume_ul"])
    for index in range(700):
        registry.resolve(f"n{index}", "node", {"slot": index, "nested": {"a": [1, {"b": 2}]}},
                         workspace="dev1" if index % 3 else "core")
    registry.register("p300", "pipette", {"max_volume_ul": 300}, capabilities=["aspirate"])
    registry.hide("n3", "node", workspace="dev1")
    out = io.StringIO()
    calls: list[tuple[int, int]] = []
    written = registry.write_export(out, progress=lambda done, total: calls.append((done, total)))
    document = registry.export()
    streamed = json.loads(out.getvalue())
    assert written == {"entries": 701, "revision": registry.revision} and calls[-1] == (701, 701)
    document["exported_at"] = streamed["exported_at"]
    assert out.getvalue() == encode_document(document) + "\n"


def test_streamed_export_of_an_empty_registry(registry: Registry) -> None:
    out = io.StringIO()
    assert registry.write_export(out)["entries"] == 0
    document = json.loads(out.getvalue())
    assert document["entries"] == [] and out.getvalue() == json.dumps(document, indent=2, sort_keys=True) + "\n"


def test_export_memory_does_not_grow_with_the_registry(tmp_path: Path) -> None:
    small, large = tmp_path / "small.db", tmp_path / "large.db"
    bulk_registry(small, 1_000)
    bulk_registry(large, 100_000)  # holding it as a document cost about 300 MiB before streaming
    base = peak_mib("--db", str(small), "export", "-o", str(tmp_path / "small.json"))
    grown = peak_mib("--db", str(large), "export", "-o", str(tmp_path / "large.json"))
    assert json.loads((tmp_path / "large.json").read_text())["entries"][-1]["name"] == "n0099999"
    assert grown - base < 24, (base, grown)


def test_import_memory_does_not_grow_with_the_file(tmp_path: Path) -> None:
    for name, count in (("small", 1_000), ("large", 100_000)):
        bulk_registry(tmp_path / f"{name}.db", count)
        peak_mib("--db", str(tmp_path / f"{name}.db"), "export", "-o", str(tmp_path / f"{name}.json"))
    base = peak_mib("--db", str(tmp_path / "small-copy.db"), "import", str(tmp_path / "small.json"))
    grown = peak_mib("--db", str(tmp_path / "large-copy.db"), "import", str(tmp_path / "large.json"))
    with Registry(tmp_path / "large-copy.db") as copy:
        assert copy.lookup("n0099999", "node") == Registry(tmp_path / "large.db").lookup("n0099999", "node")
        assert copy.find("node", {"llm"})[0].name == "n0000000"
    # parsed whole, the document and its plan took about 250 MiB more at this size
    assert grown - base < 48, (base, grown)


def test_a_bad_entry_deep_in_a_streamed_file_is_named_and_nothing_changes(tmp_path: Path) -> None:
    source = tmp_path / "source.db"
    bulk_registry(source, 3_000)
    with Registry(source) as registry:
        document = registry.export()
    document["entries"][2_345]["id"] = "not-a-ulid"
    document["entries"][2_999]["id"] = document["entries"][7]["id"]
    path = tmp_path / "broken.json"
    path.write_text(encode_document(document))
    with Registry(tmp_path / "target.db") as target:
        target.resolve("existing", "node")
        before = table_snapshot(tmp_path / "target.db")
        with pytest.raises(ImportFileError) as caught:
            target.import_file(path)
        assert table_snapshot(tmp_path / "target.db") == before
    assert caught.value.problems == [
        "entries[2345] (node 'n0002345'): id 'not-a-ulid' is not a ULID (26 characters of Crockford base32, "
        "upper case)",
        f"entries[2999] (node 'n0002999'): id {document['entries'][7]['id']!r} appears twice"]


def test_elements_cut_by_the_read_window_parse_as_a_whole_file_does(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    text = json.dumps({"entries": [{"name": f"n{i}", "x": [1.5, 12345, True, None, "\u00e9\n"], "n": -7e3}
                                   for i in range(50)], "format": "x", "deep": {"a": {"b": [[], {}]}}}, indent=1)
    monkeypatch.setattr(_json_stream, "_CHUNK", 7)  # every value crosses a window's edge somewhere
    items = list(_json_stream.members(io.StringIO(text), "entries", dict))
    expected = json.loads(text)
    assert [i.value for i in items if isinstance(i, _json_stream.Element)] == expected["entries"]
    assert {i.key: i.value for i in items if isinstance(i, _json_stream.Member)} == {
        "format": "x", "deep": expected["deep"]}


@pytest.mark.parametrize("line", [1, 3, 50, 150, -1])
def test_a_broken_streamed_file_reports_the_line_and_column_json_would(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch,
                                                                        line: int) -> None:
    text = json.dumps({"entries": [{"name": f"n{i}", "metadata": {"i": i}} for i in range(40)], "version": 1},
                      indent=2)
    lines = text.split("\n")
    lines[line] = "@" + lines[line]  # a stray character at the start of that line
    broken = "\n".join(lines)
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(broken)
    monkeypatch.setattr(_json_stream, "_CHUNK", 64)
    with pytest.raises(json.JSONDecodeError) as caught:
        list(_json_stream.members(io.StringIO(broken), "entries", dict))
    assert (caught.value.lineno, caught.value.colno) == (expected.value.lineno, expected.value.colno)
