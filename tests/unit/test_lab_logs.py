"""What a failed lab test keeps of its lab's logs (tests/e2e/labkit.py; files only)."""

from __future__ import annotations

from pathlib import Path

import pytest

from resistance.lab import censor
from resistance.lab import topology as topo
from tests.e2e import labkit


def test_a_failed_tests_lab_logs_are_copied_and_their_tails_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(censor, "CONFIG_DIR", tmp_path / "run")
    monkeypatch.delenv("RESIST_LAB_ARTIFACTS", raising=False)
    t = topo.Topology("u1")
    censor.CONFIG_DIR.mkdir()
    lines = [f"10.0.0.1:{n} > 198.18.11.1:443 sni=None ja4=t13: released" for n in range(100)]
    censor.log_path(t.censor).write_text("\n".join(lines) + "\nTraceback: the end\n")
    lab = tmp_path / "lab"
    (lab / "logs").mkdir(parents=True)
    (lab / "logs" / "connect.log").write_text("dial hung\n")
    (lab / "node-1").mkdir()
    (lab / "node-1" / "node-1.err").write_text("node stderr\n")
    (lab / "registry.db").write_text("not a log")

    with labkit.kept_on_failure(t, lab):
        assert len(labkit.WATCHED) == 1
        ((title, text),) = labkit.keep_failed(tmp_path / "base", "tests/e2e/test_x.py::test_y[a]")
    assert labkit.WATCHED == []
    kept = tmp_path / "base" / "lab-logs" / "tests_e2e_test_x.py_test_y_a_" / "u1-0"
    assert title == f"lab u1: logs kept in {kept}"
    assert sorted(p.name for p in kept.iterdir()) == [
        "censor.log", "logs_connect.log", "node-1_node-1.err",
    ]  # fmt: skip
    assert (kept / "censor.log").read_text() == censor.log_path(t.censor).read_text()
    shown = text.splitlines()
    assert f"--- censor.log (last {labkit.TAIL_LINES} lines; whole: {kept / 'censor.log'})" in shown
    assert "Traceback: the end" in shown and lines[-1] in shown and lines[0] not in shown
    assert "dial hung" in shown and "node stderr" in shown and "not a log" not in text


def test_the_artifact_directory_can_be_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RESIST_LAB_ARTIFACTS", str(tmp_path / "ci"))
    got = labkit.artifact_dir(tmp_path / "base", "tests/e2e/a.py::b")
    assert got == tmp_path / "ci" / "tests_e2e_a.py_b"
