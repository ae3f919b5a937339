"""`voice-agent dial` and `voice-agent campaign …`: outbound calls from the command line.

They read the service's own settings (DATABASE_URL, VOBIZ_AUTH_ID/TOKEN, PUBLIC_URL, AGENT_OUTBOUND_FROM_NUMBER)
and write to the same database, so the running service answers the calls and records their callbacks. `campaign
run` imports the CSV and dials it here until it is done (SIGTERM or Ctrl-C stop it cleanly: claims not yet sent
are given back, and running the same command again carries on). Service replicas with `AGENT_CAMPAIGN_DIALLER`
on dial running campaigns too; claims are atomic, so nobody is called twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import click

from agent.campaigns.dialler import DialError, Dialler, place_one
from agent.campaigns.results import number_results, to_csv
from agent.campaigns.store import RETRYABLE, CampaignError, CampaignSpec, CampaignStore, parse_csv
from agent.carrier.rest import VobizClient
from agent.config import ConfigError, Settings, load_settings
from agent.prompts.library import PromptLibrary
from agent.prompts.loader import PromptError
from agent.storage import Database
from agent.waiting import wait_event

_T = TypeVar("_T")


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _vobiz(settings: Settings) -> VobizClient:
    if not (settings.vobiz_auth_id and settings.vobiz_auth_token):
        raise click.ClickException("outbound calls need VOBIZ_AUTH_ID and VOBIZ_AUTH_TOKEN")
    return VobizClient(settings.vobiz_auth_id, settings.vobiz_auth_token.get_secret_value(), settings.vobiz_api_url)


@contextlib.asynccontextmanager
async def _store(settings: Settings) -> AsyncIterator[CampaignStore]:
    db = Database(settings.database_url)
    await db.migrate()
    try:
        yield CampaignStore(db)
    finally:
        await db.aclose()


def _run(job: Callable[[], Awaitable[_T]]) -> _T:
    try:
        return asyncio.run(job())  # type: ignore[arg-type]
    except (CampaignError, PromptError, DialError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None


def _variables(pairs: tuple[str, ...]) -> dict[str, str]:
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip().isidentifier():
            raise click.BadParameter(f"{pair!r}: use KEY=VALUE with KEY a name", param_hint="--var")
        values[key.strip()] = value
    return values


def _rate(text: str) -> float:
    """`30/min`, `2/s`, `120` (a minute); 0 = no limit."""
    value, _, unit = text.strip().partition("/")
    try:
        number = float(value)
    except ValueError:
        raise click.BadParameter(f"{text!r}: use N/min or N/s", param_hint="--rate") from None
    per = {"": 1.0, "min": 1.0, "m": 1.0, "s": 60.0, "sec": 60.0, "h": 1 / 60, "hour": 1 / 60}.get(unit.strip())
    if per is None or number < 0:
        raise click.BadParameter(f"{text!r}: use N/min or N/s", param_hint="--rate")
    return number * per


@click.command("dial")
@click.argument("number")
@click.option("--prompt", "prompt_name", default=None, help="Prompt to run (default: AGENT_DEFAULT_PROMPT).")
@click.option("--var", "variables", multiple=True, metavar="KEY=VALUE", help="Prompt variable (repeatable).")
@click.option("--from", "from_number", default=None, help="Caller ID (default: AGENT_OUTBOUND_FROM_NUMBER).")
def dial(number: str, prompt_name: str | None, variables: tuple[str, ...], from_number: str | None) -> None:
    """Call NUMBER now; the running service answers it with the prompt, its variables filled in."""
    settings = _settings()
    values = _variables(variables)

    async def job() -> None:
        prompts = PromptLibrary(settings.prompts_dir, settings.default_prompt)
        async with _store(settings) as store, _vobiz(settings) as vobiz:
            placed = await place_one(
                store, vobiz, settings, prompts, number, prompt_name or settings.default_prompt, values, from_number
            )
        click.echo(f"call placed: {placed.call_id} (attempt {placed.attempt_id})")

    _run(job)


@click.group("campaign")
def campaign() -> None:
    """Outbound campaigns: run a CSV, watch, pause, resume, stop, export."""


@campaign.command("run")
@click.argument("csv_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--prompt", "prompt_name", default=None, help="Prompt to run (default: AGENT_DEFAULT_PROMPT).")
@click.option("--name", default=None, help="Campaign name (default: the file's name); re-run to resume it.")
@click.option("--concurrency", default=5, show_default=True, type=click.IntRange(1, 1000))
@click.option("--rate", default="0", show_default=True, help="Calls started at most, e.g. 30/min (0: no limit).")
@click.option("--window", default="09:00-20:00", show_default=True, help="Calling hours, callee's local time.")
@click.option("--timezone", default=None, help="Callees' zone when a row has no timezone column.")
@click.option("--max-attempts", default=3, show_default=True, type=click.IntRange(1, 20))
@click.option("--retry-delay", default=600.0, show_default=True, type=float, help="Seconds; doubles per attempt.")
@click.option("--retry-on", default=",".join(RETRYABLE), show_default=True, help="Results that are retried.")
@click.option("--from", "from_number", default=None, help="Caller ID (default: AGENT_OUTBOUND_FROM_NUMBER).")
@click.option("--detach", is_flag=True, help="Only queue it: the service's replicas dial it.")
def campaign_run(
    csv_file: Path,
    prompt_name: str | None,
    name: str | None,
    concurrency: int,
    rate: str,
    window: str,
    timezone: str | None,
    max_attempts: int,
    retry_delay: float,
    retry_on: str,
    from_number: str | None,
    detach: bool,
) -> None:
    """Dial every number in CSV_FILE (a `number` column; other columns are prompt variables)."""
    settings = _settings()
    try:
        spec = CampaignSpec.asked(
            settings,
            name=name or csv_file.stem,
            prompt=prompt_name,
            from_number=from_number,
            timezone=timezone,
            concurrency=concurrency,
            rate_per_min=_rate(rate),
            window=window,
            max_attempts=max_attempts,
            retry_delay_s=retry_delay,
            retry_on=tuple(r.strip() for r in retry_on.split(",") if r.strip()),
        )
    except CampaignError as exc:
        raise click.ClickException(str(exc)) from None
    text = csv_file.read_text(encoding="utf-8-sig")

    async def job() -> None:
        prompts = PromptLibrary(settings.prompts_dir, settings.default_prompt)
        prompts.get(spec.prompt)
        async with _store(settings) as store:
            try:
                campaign_id = str((await store.find(spec.name))["id"])
                click.echo(f"resuming campaign {spec.name!r} ({campaign_id})")
            except CampaignError:
                rows = parse_csv(text)
                campaign_id = await store.create(spec, rows)
                click.echo(f"campaign {spec.name!r} ({campaign_id}): {len(rows)} numbers")
            if detach:
                return
            async with _vobiz(settings) as vobiz:
                await _dial_until_done(store, vobiz, settings, prompts, campaign_id)

    _run(job)


async def _dial_until_done(
    store: CampaignStore, vobiz: VobizClient, settings: Settings, prompts: PromptLibrary, campaign_id: str
) -> None:
    dialler = Dialler(store, vobiz, settings, prompts, only={campaign_id})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    dialler.start()
    try:
        while not stop.is_set():
            progress = await store.progress(campaign_id)
            outcomes = ", ".join(f"{k} {v}" for k, v in sorted(progress.outcomes.items())) or "none yet"
            click.echo(f"\r{progress.done}/{progress.campaign['total']} done ({outcomes})   ", nl=False, err=True)
            if progress.campaign["state"] in ("completed", "stopped"):
                break
            await wait_event(stop, 2.0)
    finally:
        click.echo("", err=True)
        await dialler.stop()
    state = (await store.find(campaign_id))["state"]
    click.echo(f"campaign {state}" + ("" if state in ("completed", "stopped") else ": run again to carry on"))


def _campaign_action(action: str) -> click.Command:
    @click.argument("ref")
    def command(ref: str) -> None:
        settings = _settings()

        async def job() -> str:
            async with _store(settings) as store:
                return await store.set_state(ref, action)

        click.echo(_run(job))

    command.__doc__ = f"{action.capitalize()} a campaign (by name or id)."
    return click.command(action)(command)


for _action in ("pause", "resume", "stop"):
    campaign.add_command(_campaign_action(_action))


@campaign.command("status")
@click.argument("ref", required=False)
def campaign_status(ref: str | None) -> None:
    """Progress and outcome counts of one campaign, or a line per campaign."""
    settings = _settings()

    async def job() -> None:
        async with _store(settings) as store:
            refs = [ref] if ref else [c["id"] for c in await store.all_campaigns()]
            for one in refs:
                p = await store.progress(one)
                outcomes = ", ".join(f"{k} {v}" for k, v in sorted(p.outcomes.items())) or "-"
                c = p.campaign
                click.echo(f"{c['name']} ({c['id']}): {c['state']}, {p.done}/{c['total']} done, {outcomes}")

    _run(job)


@campaign.command("export")
@click.argument("ref")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Default: stdout.")
def campaign_export(ref: str, output: Path | None) -> None:
    """Per-number results as CSV: outcome, attempts, duration, call link, recording, tool results."""
    settings = _settings()

    async def job() -> str:
        async with _store(settings) as store:
            return to_csv(await number_results(store, ref, settings.public_url))

    text = _run(job)
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text, encoding="utf-8")


@campaign.command("dnc")
@click.argument("numbers", nargs=-1)
@click.option("--remove", is_flag=True, help="Take the numbers off the list.")
@click.option("--reason", default="", help="Why (kept with the number).")
def campaign_dnc(numbers: tuple[str, ...], remove: bool, reason: str) -> None:
    """Add NUMBERS to the do-not-call list (or --remove them); without numbers, list it."""
    settings = _settings()

    async def job() -> None:
        async with _store(settings) as store:
            if not numbers:
                for entry in await store.dnc_list():
                    click.echo(f"{entry['number']}\t{entry['reason']}")
            elif remove:
                for n in numbers:
                    click.echo(f"{n}: {'removed' if await store.dnc_remove(n) else 'not listed'}")
            else:
                click.echo(f"added {await store.dnc_add(numbers, reason)}")

    _run(job)
