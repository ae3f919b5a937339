"""Prompt versions seen on calls: what is stored for a version when a call is saved, and reading them back.

A version is stored once per (name, content hash) with the call that first used it, so the Prompts page can show
every version's text, when it was used and by how many calls, and diff two of them.
"""

from __future__ import annotations

import datetime as dt
import difflib
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from agent.prompts.loader import Prompt, PromptError, parse_prompt
from agent.storage import tables as t
from agent.storage.call_results import PromptVersionInfo
from agent.storage.cleaning import clean_text, cut, json_object, redact_headers
from agent.storage.store_base import StoreBase


class PromptVersionQueries(StoreBase):
    async def prompt_versions(self, name: str) -> list[PromptVersionInfo]:
        """Every version of a prompt seen on calls, oldest first, with when it was first/last used and by how
        many calls, and its text where it was stored."""
        c = t.calls.c
        seen = (
            select(c.prompt_hash, func.count(), func.min(c.started_at), func.max(c.started_at))
            .where(c.prompt_name == name)
            .group_by(c.prompt_hash)
        )
        async with self.db.engine.connect() as conn:
            usage = {h: (int(n), first, last) for h, n, first, last in await conn.execute(seen)}
            versions_of = select(t.prompt_versions).where(t.prompt_versions.c.name == name)
            stored = {v.content_hash: v for v in await conn.execute(versions_of)}
        versions = []
        for content_hash in usage.keys() | stored.keys():
            calls, first, last = usage.get(content_hash, (0, None, None))
            version = stored.get(content_hash)
            first_seen = first or (version.first_seen if version else None)
            assert first_seen is not None
            versions.append(
                PromptVersionInfo(
                    name=name,
                    content_hash=content_hash,
                    first_seen=first_seen,
                    last_seen=last,
                    calls=calls,
                    instructions=version.instructions if version else None,
                    meta=version.meta if version else None,
                    from_source=version.from_source if version else False,
                )
            )
        return sorted(versions, key=lambda v: (v.first_seen, v.content_hash))

    async def prompt_version(self, name: str, content_hash: str) -> PromptVersionInfo | None:
        return next((v for v in await self.prompt_versions(name) if v.content_hash == content_hash), None)

    async def diff_prompt_versions(self, name: str, old_hash: str, new_hash: str, context: int = 3) -> str:
        """A unified diff between two stored versions of a prompt (front matter and instructions)."""
        versions = {v.content_hash: v for v in await self.prompt_versions(name)}
        texts = []
        for content_hash in (old_hash, new_hash):
            version = versions.get(content_hash)
            if version is None or version.text is None:
                raise KeyError(f"prompt {name!r} version {content_hash} is not stored")
            texts.append(version.text)
        return "".join(
            difflib.unified_diff(
                texts[0].splitlines(keepends=True),
                texts[1].splitlines(keepends=True),
                fromfile=f"{name}@{old_hash}",
                tofile=f"{name}@{new_hash}",
                n=context,
            )
        )


def version_row(prompt: Prompt, seen: dt.datetime) -> dict[str, Any]:
    """The version to store for a prompt: the file's own template when it still matches the call's hash.

    The prompt a call holds has `{{caller}}`/`{{now}}` filled in, so storing its instructions would put one
    caller's number and the time into the "version"; re-reading the file (in a worker thread) avoids that.
    """
    instructions, meta, from_source = prompt.instructions, prompt.meta, False
    if prompt.source and not prompt.source.startswith("<"):
        try:
            source = parse_prompt(prompt.name, Path(prompt.source).read_text(encoding="utf-8"), prompt.source)
            if source.content_hash == prompt.content_hash:
                instructions, meta, from_source = source.instructions, source.meta, True
        except (OSError, UnicodeDecodeError, PromptError):
            pass
    return {
        "name": cut(prompt.name, t.SHORT_LEN),
        "content_hash": cut(prompt.content_hash, t.SHORT_LEN),
        "instructions": clean_text(instructions),
        "meta": redact_headers(json_object(meta.model_dump(mode="json"))),
        "from_source": from_source,
        "first_seen": seen,
    }
