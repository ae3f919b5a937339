"""`voice-agent`: the command line for running the service."""

# ruff: noqa: E402 - one statement must run before the imports (see below)
from __future__ import annotations

import sys

# httpx imports its own command-line client (click, rich, pygments: ~4 MB) whenever rich and pygments happen to be
# installed (a dev environment; not the production image, where the import fails and httpx carries on without it).
# Nothing here uses that client, so it is never imported: every environment then runs `serve` as production does.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

import asyncio
import contextlib
import importlib
from pathlib import Path
from typing import Final

import click
import uvicorn
import yaml

from agent.config import ConfigError, Settings, load_settings
from agent.observability import logs
from agent.prompts.library import PromptLibrary
from agent.prompts.loader import Prompt, PromptError
from agent.web.server import DrainingServer

SIM_EXTRA_HINT: Final = "pip install 'vobiz-voice-agent[sim]'"

_SIM_MODULES: Final = frozenset({"espeakng_loader", "pocketsphinx", "matplotlib", "rich", "psutil"})
"""Top-level modules of the optional `sim` extra's packages."""

_LAZY_COMMANDS: Final = {
    "call": ("agent.testkit.commands.call", "call_command"),
    "demo": ("agent.testkit.commands.demo", "demo_command"),
    "eval": ("agent.testkit.commands.eval", "eval_command"),
    "loadtest": ("agent.testkit.loadtest.cli", "loadtest"),
    "dial": ("agent.campaigns.cli", "dial"),
    "campaign": ("agent.campaigns.cli", "campaign"),
}
"""Commands imported only when run (or listed by --help), so that `serve` starts without their code: the
simulation and load-test tooling (and the `sim` extra some of it needs), and the outbound dialling commands."""


class _LazyGroup(click.Group):
    """A command group whose simulation commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in _LAZY_COMMANDS:
            return super().get_command(ctx, cmd_name)
        module_name, attribute = _LAZY_COMMANDS[cmd_name]
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            if (exc.name or "").split(".")[0] not in _SIM_MODULES:
                raise
            return _unavailable(cmd_name, f"voice-agent {cmd_name} needs the sim extra ({exc}): {SIM_EXTRA_HINT}")
        command = getattr(module, attribute)
        assert isinstance(command, click.Command)
        return command


def _unavailable(name: str, message: str) -> click.Command:
    """Stands in for a command whose optional packages are missing: listed in --help, one clear line when run."""

    def fail() -> None:
        raise click.ClickException(message)

    return click.Command(
        name,
        callback=fail,
        help=f"(unavailable) {message}",
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
    )


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)


@click.group(cls=_LazyGroup)
def main() -> None:
    """Vobiz phone voice agent on OpenAI Realtime."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", default=8080, show_default=True, type=int, help="Port to bind.")
def serve(host: str, port: int) -> None:
    """Answer Vobiz calls. Without OPENAI_API_KEY the embedded offline engine answers instead."""
    from agent.storage.database import migrate_in_child, startup_problem
    from agent.web.app import create_app

    settings = _settings()
    try:
        logs.configure(settings.log_level, secrets=settings.secret_values, fmt=settings.log_format)
    except ValueError as exc:  # logging's own check of the level name: one line, not its traceback
        click.echo(f"invalid setting AGENT_LOG_LEVEL: {exc} (use DEBUG, INFO, WARNING, ERROR or CRITICAL)", err=True)
        sys.exit(2)
    problem = asyncio.run(startup_problem(settings.database_url))
    if problem is not None:
        click.echo(problem if problem.startswith("invalid setting") else f"cannot start: {problem}", err=True)
        sys.exit(2)
    asyncio.run(migrate_in_child(settings.database_url))  # a schema behind: Alembic runs in a child process
    try:
        app = create_app(settings, embedded_engine=settings.openai_api_key is None and not settings.openai_base_url)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    except PromptError as exc:
        click.echo(f"cannot start: {exc}", err=True)
        sys.exit(2)
    # Client addresses (console throttle, webhook allow-list) come from X-Forwarded-For only via trusted proxies.
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        ws_max_size=1 << 20,
        # Declined if a carrier offers it: base64 audio hardly compresses, and each socket would spend CPU on every
        # 20 ms frame and keep two zlib states for the call's life.
        ws_per_message_deflate=False,
        lifespan="on",
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
    )
    DrainingServer(config, app.state.agent).run()


@main.command("realtime-sim")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=9000, show_default=True, type=int)
@click.option("--tone", is_flag=True, help="Reply with tones instead of speech (cheapest, for benchmarks).")
@click.option("--no-asr", is_flag=True, help="Skip speech recognition of callers (saves CPU in load tests).")
@click.option("--prompts-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("prompts"))
@click.option("--first-audio-ms", type=int, default=300, show_default=True, help="response.created -> audio.")
@click.option("--speed", type=float, default=2.0, show_default=True, help="Streaming speed (x real time).")
def realtime_sim(
    host: str, port: int, tone: bool, no_asr: bool, prompts_dir: Path, first_audio_ms: int, speed: float
) -> None:
    """Serve the offline engine: OpenAI's Realtime GA protocol on ws://HOST:PORT/v1/realtime.

    Point an agent at it with OPENAI_BASE_URL=http://HOST:PORT/v1. Replies follow each prompt's scripted
    dialogue in synthesised speech (eSpeak NG); callers are recognised with PocketSphinx.
    """
    from agent.engine.engine import EngineOptions, run_engine

    logs.configure("INFO")
    options = EngineOptions(
        mode="tone" if tone else "speech",
        asr=not no_asr,
        prompts_dir=prompts_dir,
        first_audio_delay_ms=first_audio_ms,
        speed=speed,
        host=host,
        port=port,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_engine(options))


@main.group()
def prompts() -> None:
    """Inspect the prompt library (AGENT_PROMPTS_DIR)."""


def _library() -> PromptLibrary:
    settings = _settings()
    # The commands print every problem themselves; the library's own error log would repeat each one.
    return PromptLibrary(settings.prompts_dir, settings.default_prompt, log_errors=False)


@prompts.command("list")
def prompts_list() -> None:
    """Every prompt with its status, hash and the numbers routed to it."""
    library = _library()
    numbers = library.numbers()
    for name, result in library.check_all().items():
        routed = ", ".join(sorted(f"+{n}" for n, target in numbers.items() if target == name))
        default = " (default)" if name == library.default else ""
        if isinstance(result, PromptError):
            click.echo(f"{name}{default}\tINVALID\t{str(result).splitlines()[0]}")
        else:
            click.echo(f"{name}{default}\tok {result.content_hash}\t{result.meta.description}\t{routed}".rstrip())


@prompts.command("check")
@click.argument("names", nargs=-1)
def prompts_check(names: tuple[str, ...]) -> None:
    """Validate prompts (all by default); exits 1 with one line per problem if any is invalid."""
    library = _library()
    results = {n: _get_or_error(library, n) for n in names} if names else library.check_all()
    failed = False
    for name, result in results.items():
        if isinstance(result, PromptError):
            failed = True
            click.echo(str(result), err=True)
        elif (problem := _experiment_problem(library, result)) is not None:
            failed = True
            click.echo(problem, err=True)
        else:
            click.echo(f"{name}: ok")
    try:
        for number, target in library.numbers().items():
            if isinstance(_get_or_error(library, target), PromptError):
                failed = True
                click.echo(f"numbers.yaml: +{number} routes to unusable prompt {target!r}", err=True)
    except PromptError as exc:
        failed = True
        click.echo(str(exc), err=True)
    sys.exit(1 if failed else 0)


def _experiment_problem(library: PromptLibrary, prompt: Prompt) -> str | None:
    """An experiment whose candidate could not be served would quietly stop: `check` says so."""
    experiment = prompt.meta.experiment
    if experiment is None:
        return None
    where = prompt.source or prompt.name
    if experiment.candidate == prompt.name:
        return f"{where}: experiment.candidate: a prompt cannot be its own candidate"
    candidate = _get_or_error(library, experiment.candidate)
    if isinstance(candidate, PromptError):
        first = str(candidate).splitlines()[0]
        return f"{where}: experiment.candidate: prompt {experiment.candidate!r} cannot be served ({first})"
    return None


def _get_or_error(library: PromptLibrary, name: str) -> Prompt | PromptError:
    try:
        return library.get(name)
    except PromptError as exc:
        return exc


@prompts.command("show")
@click.argument("name")
def prompts_show(name: str) -> None:
    """The validated settings (with defaults filled in) and the raw instructions."""
    prompt = _get_or_exit(_library(), name)
    click.echo(yaml.safe_dump(prompt.meta.model_dump(mode="json"), sort_keys=False).rstrip())
    click.echo("---")
    click.echo(prompt.instructions)


@prompts.command("render")
@click.argument("name")
@click.option("--caller", default="+910000000001", show_default=True)
@click.option("--called", default="+910000000002", show_default=True)
@click.option("--var", "variables", multiple=True, metavar="KEY=VALUE", help="Outbound-call variable.")
def prompts_render(name: str, caller: str, called: str, variables: tuple[str, ...]) -> None:
    """The instructions exactly as the model would get them for a call."""
    values = dict(v.split("=", 1) for v in variables if "=" in v)
    prompt = _get_or_exit(_library(), name)
    try:
        click.echo(prompt.render({"caller": caller, "called": called} | values).instructions)
    except PromptError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)


def _get_or_exit(library: PromptLibrary, name: str) -> Prompt:
    result = _get_or_error(library, name)
    if isinstance(result, PromptError):
        click.echo(str(result), err=True)
        sys.exit(1)
    return result
