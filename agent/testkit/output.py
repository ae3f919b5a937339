"""Where `demo`, `call`, `loadtest` and `eval` put their files when not told: one git-ignored folder.

Each run gets a folder of its own (`var/out/<command>-<UTC time>/`), so runs never overwrite each other and
nothing lands in the repository root.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

OUT_DIR = Path("var/out")


def run_folder(command: str, now: dt.datetime | None = None) -> Path:
    """A fresh folder name for one run of `command` (not created here: the writers create what they write)."""
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%d-%H%M%S")
    folder = OUT_DIR / f"{command}-{stamp}"
    n = 1
    while folder.exists():
        n += 1
        folder = OUT_DIR / f"{command}-{stamp}-{n}"
    return folder
