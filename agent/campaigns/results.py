"""A campaign's results per number, joined with the stored call records: for the console page and the CSV export."""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from sqlalchemy import select

from agent.campaigns.store import CampaignStore
from agent.storage import tables as t

EXPORT_COLUMNS = (
    "row",
    "number",
    "state",
    "outcome",
    "attempts",
    "last_result",
    "duration_s",
    "hangup_cause",
    "call_id",
    "call_url",
    "recording_url",
    "tool_results",
    "variables",
)


async def number_results(
    store: CampaignStore, ref: str, public_url: str, *, limit: int | None = None, offset: int = 0
) -> list[dict[str, Any]]:
    """One dict per number (in CSV order): its outcome, the last call, its record, recording and tool results."""
    rows = await store.numbers(ref, limit=limit, offset=offset)
    call_ids = [r["call_id"] for r in rows if r["call_id"]]
    tools, recorded = await _call_details(store, call_ids)
    results = []
    for row in rows:
        call_id = row["call_id"] or ""
        call_url = f"{public_url}/console/calls/{quote(call_id, safe='')}" if call_id else ""
        results.append(
            {
                "row": row["row_no"],
                "number": row["number"],
                "state": row["state"],
                "outcome": row["outcome"] or "",
                "attempts": row["attempts"],
                "last_result": row["last_result"] or "",
                "duration_s": "" if row["duration_s"] is None else f"{row['duration_s']:.0f}",
                "hangup_cause": row["hangup_cause"] or "",
                "call_id": call_id,
                "call_url": call_url,
                "recording_url": f"{call_url}/recording.wav" if call_id in recorded else "",
                "tool_results": json.dumps(tools[call_id], ensure_ascii=False) if tools.get(call_id) else "",
                "variables": json.dumps(row["variables"] or {}, ensure_ascii=False, sort_keys=True),
            }
        )
    return results


async def _call_details(store: CampaignStore, call_ids: Sequence[str]) -> tuple[dict[str, list[Any]], set[str]]:
    tools: dict[str, list[Any]] = defaultdict(list)
    recorded: set[str] = set()
    if not call_ids:
        return tools, recorded
    used = t.tool_uses.c
    async with store.db.engine.connect() as conn:
        for chunk in range(0, len(call_ids), 500):
            ids = list(call_ids[chunk : chunk + 500])
            uses = await conn.execute(
                select(used.call_id, used.name, used.ok, used.result)
                .where(used.call_id.in_(ids))
                .order_by(used.call_id, used.seq)
            )
            for use in uses:
                tools[use.call_id].append({"tool": use.name, "ok": use.ok, "result": (use.result or "")[:500]})
            paths = await conn.execute(
                select(t.calls.c.call_id).where(t.calls.c.call_id.in_(ids), t.calls.c.recording_path.is_not(None))
            )
            recorded.update(p.call_id for p in paths)
    return tools, recorded


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(EXPORT_COLUMNS), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(v) for k, v in row.items()})
    return out.getvalue()


def _cell(value: Any) -> Any:
    """Spreadsheets run cells that start with = + - @ as formulas; a callee's variable must never do that."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@") and not value[1:].replace(" ", "").isdigit():
        return "'" + value
    return value
