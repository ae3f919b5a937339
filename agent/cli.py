"""`voice-agent`: the command line for running the service."""

from __future__ import annotations

import sys

import click

from agent.config import ConfigError, Settings, load_settings
from agent.observability import logs


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)


@click.group()
def main() -> None:
    """Vobiz phone voice agent on OpenAI Realtime."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", default=8080, show_default=True, type=int, help="Port to bind.")
def serve(host: str, port: int) -> None:
    """Answer Vobiz calls. Without OPENAI_API_KEY the embedded offline engine answers instead."""
    import uvicorn

    from agent.app import create_app
    from agent.prompts.loader import PromptError

    settings = _settings()
    logs.configure(settings.log_level, secrets=settings.secret_values)
    try:
        app = create_app(settings, embedded_engine=settings.openai_api_key is None and not settings.openai_base_url)
    except PromptError as exc:
        click.echo(f"cannot start: {exc}", err=True)
        sys.exit(2)
    uvicorn.run(app, host=host, port=port, log_config=None, ws_max_size=1 << 20, lifespan="on")
