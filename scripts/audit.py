"""Audit the locked dependency set (requirements.lock) for known vulnerabilities with pip-audit.

pip-audit asks a vulnerability service about each pinned version: PyPI's per-release JSON API
(https://pypi.org/pypi/NAME/VERSION/json, its default) or OSV (https://api.osv.dev). This script checks which of
the two answers from here and runs pip-audit against it with --strict, so a package that could not be checked
fails the audit instead of being skipped silently (pip-audit reports "no known vulnerabilities" when every package
was skipped).

When neither answers (behind a PyPI mirror that serves only the per-project JSON, and with no route to OSV), it
says exactly that and falls back to what the per-project JSON does carry: the advisories against each project's
latest release. Pins at the latest release are checked exactly; older pins are listed as not checked. Found
advisories fail the audit in every mode.

Usage: python scripts/audit.py [requirements.lock]
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PYPI_RELEASE_PROBE = "https://pypi.org/pypi/pip/24.0/json"
OSV_QUERY = "https://api.osv.dev/v1/query"
TIMEOUT_S = 20.0


def _probe(url: str, body: dict[str, Any] | None = None) -> str | None:
    """None when ``url`` answers 200; otherwise why not, in a few words."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return None if response.status == 200 else f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return str(getattr(exc, "reason", exc))


def _pip_audit(lock: Path, service: str) -> int:
    command = [sys.executable, "-m", "pip_audit", "--requirement", str(lock), "--no-deps", "--disable-pip"]
    command += ["--strict", "--progress-spinner", "off", "--vulnerability-service", service]
    print(f"audit: pip-audit against {service}: {' '.join(command[1:])}", flush=True)
    return subprocess.run(command, check=False).returncode


@dataclass
class Pin:
    name: str
    version: str


def _pins(lock: Path) -> list[Pin]:
    pins = []
    for raw in lock.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^;\s]+)", line.split(";")[0].strip())
        if match:
            pins.append(Pin(re.sub(r"[-_.]+", "-", match.group(1)).lower(), match.group(3)))
        elif line:
            raise SystemExit(f"audit: {lock}: not an exact pin: {raw!r}")
    return pins


def _latest(pin: Pin) -> tuple[Pin, str, list[dict[str, Any]]]:
    """The project's latest version and the advisories PyPI lists against that release."""
    with urllib.request.urlopen(f"https://pypi.org/pypi/{pin.name}/json", timeout=TIMEOUT_S) as response:
        project = json.load(response)
    return pin, str(project["info"]["version"]), list(project.get("vulnerabilities") or [])


def _latest_release_audit(lock: Path) -> int:
    pins = _pins(lock)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(_latest, pins))
    found, older = [], []
    for pin, latest, advisories in answers:
        if pin.version != latest:
            older.append(f"{pin.name}=={pin.version} (latest {latest})")
            continue
        for advisory in advisories:
            if not advisory.get("withdrawn"):
                fixed = ", ".join(advisory.get("fixed_in") or []) or "none yet"
                found.append(f"{pin.name}=={pin.version}: {advisory.get('id')} (fixed in: {fixed})")
    checked = len(pins) - len(older)
    print(f"audit: checked {checked} of {len(pins)} pins (those at PyPI's latest release): {len(found)} advisories")
    for line in found:
        print(f"  VULNERABLE {line}")
    if older:
        print(f"audit: not checked here, older than PyPI's latest release ({len(older)}): {', '.join(older)}")
        print("audit: they are held back by a cap in pyproject.toml, by this Python, or by an old lock")
    return 1 if found else 0


def main(argv: list[str]) -> int:
    lock = Path(argv[1] if len(argv) > 1 else "requirements.lock")
    pypi = _probe(PYPI_RELEASE_PROBE)
    if pypi is None:
        return _pip_audit(lock, "pypi")
    osv = _probe(OSV_QUERY, {"package": {"name": "pip", "ecosystem": "PyPI"}, "version": "24.0"})
    if osv is None:
        return _pip_audit(lock, "osv")
    print(
        "audit: pip-audit cannot run here: its services do not answer from this network "
        f"(PyPI's per-release JSON API, {PYPI_RELEASE_PROBE}: {pypi}; OSV, {OSV_QUERY}: {osv}). "
        "Falling back to the advisories PyPI's per-project JSON lists for each project's latest release.",
        flush=True,
    )
    return _latest_release_audit(lock)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
