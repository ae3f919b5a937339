"""Where demo, call and loadtest put their files when not told: a fresh folder under the git-ignored var/out."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from agent.testkit.output import OUT_DIR, run_folder


def test_each_run_gets_its_own_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    first = run_folder("demo", when)
    assert first == OUT_DIR / "demo-20260102-030405" and not first.exists()  # the writers create it
    first.mkdir(parents=True)
    assert run_folder("demo", when) == OUT_DIR / "demo-20260102-030405-2"  # never overwrites a run
    ignored = (Path(__file__).resolve().parents[1] / ".gitignore").read_text().split()
    assert "var/" in ignored and OUT_DIR.parts[0] == "var"
