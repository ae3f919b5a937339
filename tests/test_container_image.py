"""The production container image, really built and run, and the deployment files that describe it.

The image tests (marker ``container``; alone: ``pytest -m container`` or ``make image-test``) build
deploy/Dockerfile with podman on the local debootstrap base that scripts/ensure-podman makes (no image registry
needed), then check what Kubernetes and compose rely on: its size, a non-root user, no simulation-only packages,
/healthz and /readyz, a signed call end to end against a local Realtime stand-in, and a SIGTERM drain that lets a
live call finish before the process exits 0. The manifest tests validate deploy/k8s against the Kubernetes
schemas and deploy/compose.yaml against the compose spec, and check both agree with what the image tests proved.
They skip only when podman cannot run here at all (not root, no apt-get).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from agent.engine import RealtimeServer, RealtimeSimConfig
from agent.storage import CallStore, Database
from agent.testkit.carrier import CallerAudio, CarrierSim, SimCallOptions
from agent.waiting import within
from tests.agent_process import free_port

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
IMAGE = "localhost/vobiz-voice-agent:test"
PODMAN = ["podman", "--runtime", "runc"]  # crun, podman's default, fails on hybrid-cgroup hosts
ULIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
HARDENED = ["--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
"""How the Deployment's and compose's securityContext run it: the image tests run it the same way."""

PORT = 8080
"""The port the image exposes and the manifests route to."""
UID = 10001
"""The image's user, and the Deployment's runAsUser."""
MAX_IMAGE_MB = 500
"""Measured: ~380 MB on the debootstrap base (of which ~176 MB is the base), ~350 MB on python:3.11-slim."""
SIM_ONLY = ("espeakng_loader", "pocketsphinx", "matplotlib", "rich", "psutil")
TOKEN = "vobiz-token-for-the-image-test"
OPERATOR = "operator-token-for-the-image-test"


def container(test: Callable[..., Any]) -> Callable[..., Any]:
    """Marks an image test: selectable with ``-m container``, and given time for a first build (the suite's
    default timeout is 120 s; the first run also makes the base image)."""
    marked: Callable[..., Any] = pytest.mark.timeout(900)(pytest.mark.container(test))
    return marked


# --- the image ----------------------------------------------------------------------------------------------


@dataclass
class Built:
    image: str
    base: str
    build_s: float
    inspect: dict[str, Any]


def _run(args: list[str], timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)


def _base_image() -> str:
    """scripts/ensure-podman: installs podman if needed and makes (or reuses) the local Debian base."""
    if shutil.which("podman") is None and os.geteuid() != 0:
        pytest.skip("podman is not installed and installing it needs root")
    done = _run([str(ROOT / "scripts" / "ensure-podman")], timeout=900)
    if done.returncode == 3:
        pytest.skip(f"podman cannot run here: {done.stderr.strip().splitlines()[-1]}")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def built() -> Built:
    base = _base_image()
    before = _run(["podman", "image", "inspect", "--format", "{{.Id}}", IMAGE], timeout=60).stdout.strip()
    ca_mount = ["--volume", f"{CA_BUNDLE}:{CA_BUNDLE}:ro"] if Path(CA_BUNDLE).is_file() else []
    started = time.monotonic()
    done = _run(
        [
            *PODMAN,
            "build",
            "--layers",
            "--format",
            "docker",  # keeps HEALTHCHECK (OCI image configs have no such field)
            "--network",
            "host",
            *ca_mount,  # pip in the build trusts what this host trusts (a TLS proxy's CA, say)
            *ULIMITS,
            "--build-arg",
            f"BASE_IMAGE={base}",
            "--ignorefile",
            str(DEPLOY / "Dockerfile.dockerignore"),
            "--file",
            str(DEPLOY / "Dockerfile"),
            "--tag",
            IMAGE,
            str(ROOT),
        ],
        timeout=900,
    )
    build_s = time.monotonic() - started
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    inspect = _run(["podman", "image", "inspect", IMAGE], timeout=60)
    assert inspect.returncode == 0, inspect.stderr
    if before and before != json.loads(inspect.stdout)[0]["Id"]:
        _run(["podman", "rmi", before], timeout=120)  # the previous build's image; its cached layers stay
    print(f"\nimage {IMAGE} on {base}: built in {build_s:.1f} s")
    return Built(IMAGE, base, build_s, json.loads(inspect.stdout)[0])


@container
def test_image_is_small_non_root_and_holds_no_simulation_packages(built: Built) -> None:
    size_mb = built.inspect["Size"] / 1e6
    print(f"image size {size_mb:.0f} MB")
    assert size_mb < MAX_IMAGE_MB
    config = built.inspect["Config"]
    assert config["User"] == f"{UID}:{UID}"
    assert f"{PORT}/tcp" in config["ExposedPorts"]
    healthcheck = built.inspect.get("Healthcheck") or config.get("Healthcheck") or {}
    assert "/healthz" in " ".join(healthcheck.get("Test", []))
    assert config.get("StopSignal") in (None, "SIGTERM", "15")
    probe = (
        "import importlib.util, json, os, shutil;"
        f"print(json.dumps({{'uid': os.getuid(), 'agent': shutil.which('voice-agent'), 'pip': shutil.which('pip'),"
        f"'sim': [m for m in {list(SIM_ONLY)!r} if importlib.util.find_spec(m)]}}))"
    )
    done = _run([*PODMAN, "run", "--rm", *ULIMITS, "--network", "none", built.image, "python", "-c", probe], 120)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found == {"uid": UID, "agent": "/opt/agent/bin/voice-agent", "pip": None, "sim": []}
    # The load-test tooling is not in the production image: one clear line, not a traceback.
    done = _run([*PODMAN, "run", "--rm", *ULIMITS, "--network", "none", built.image, "voice-agent", "loadtest"], 120)
    assert done.returncode == 1
    assert [line for line in done.stderr.splitlines() if "level=" not in line] == [
        "Error: voice-agent loadtest needs the sim extra (No module named 'rich'): pip install 'vobiz-voice-agent[sim]'"
    ]


# --- the image, running ---------------------------------------------------------------------------------------


@dataclass
class Running:
    name: str
    base_url: str
    var: Path


async def _poll(what: str, seconds: float, check: Callable[[], Awaitable[bool]]) -> None:
    """Until ``check()`` is true, or fail after ``seconds``; retries every 0.2 s."""

    async def loop() -> None:
        while True:
            if await check():
                return
            await asyncio.sleep(0.2)  # another process's state: nothing to await but its answers

    try:
        await within(seconds, loop())
    except TimeoutError:
        raise AssertionError(f"not within {seconds:g} s: {what}") from None


async def _podman(*args: str, timeout: float = 60) -> tuple[int, str]:  # noqa: ASYNC109 - a per-command deadline
    proc = await asyncio.create_subprocess_exec(
        *PODMAN, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await within(timeout, proc.communicate())
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def _k8s_documents() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "agent.yaml").read_text()) if d]


def _deployment() -> dict[str, Any]:
    return next(d for d in _k8s_documents() if d["kind"] == "Deployment")


def _agent_container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "agent")


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def _grace_and_drain() -> tuple[int, int]:
    """The Deployment's terminationGracePeriodSeconds and the AGENT_DRAIN_TIMEOUT_S it gives the agent."""
    deployment = _deployment()
    grace = int(deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"])
    return grace, int(_env(_agent_container(deployment))["AGENT_DRAIN_TIMEOUT_S"])


def _var_dir() -> Path:
    """A host folder for the container's /app/var (the image's user must own it: the root is read-only)."""
    var = Path(tempfile.mkdtemp(prefix="agent-image-var-"))
    os.chown(var, UID, UID)
    return var


@contextlib.asynccontextmanager
async def _serving(image: str, **env: str) -> AsyncIterator[Running]:
    """The image serving on 127.0.0.1 (host network) with ``env``, its /app/var a host folder; removed after."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    var = _var_dir()
    name = f"voice-agent-test-{uuid.uuid4().hex[:8]}"
    code, out = await _podman(
        "run",
        "--detach",
        "--name",
        name,
        "--network",
        "host",
        *ULIMITS,
        *HARDENED,
        "--volume",
        f"{var}:/app/var",
        *(arg for k, v in ({"PUBLIC_URL": base} | env).items() for arg in ("--env", f"{k}={v}")),
        image,
        *("voice-agent", "serve", "--host", "127.0.0.1", "--port", str(port)),
    )
    assert code == 0, out
    try:
        yield Running(name, base, var)
    finally:
        _, logs = await _podman("logs", name)
        print(f"--- container logs (last 40 lines) ---\n{''.join(logs.splitlines(True)[-40:])}")
        await _podman("rm", "--force", "--time", "0", name)
        shutil.rmtree(var, ignore_errors=True)


async def _ok(http: httpx.AsyncClient, path: str) -> bool:
    try:
        return (await http.get(path)).status_code == 200
    except httpx.TransportError:
        return False


async def _wait_ready(http: httpx.AsyncClient) -> None:
    await _poll("/healthz answers 200", 60, lambda: _ok(http, "/healthz"))
    await _poll("/readyz answers 200 (the model endpoint is reachable)", 30, lambda: _ok(http, "/readyz"))


@pytest.fixture
async def running(built: Built) -> AsyncIterator[Running]:
    """The image as production runs it: an OpenAI key (here a dummy, the model a local Realtime stand-in in this
    process), signed webhooks, the console on, the Kubernetes manifest's drain timeout."""
    _, drain_s = _grace_and_drain()
    async with RealtimeServer(RealtimeSimConfig(reply_ms=300)) as engine:
        env = {
            "OPENAI_API_KEY": "sk-dummy-not-used",
            "OPENAI_BASE_URL": engine.http_base_url,
            "VOBIZ_AUTH_TOKEN": TOKEN,
            "AGENT_OPERATOR_TOKEN": OPERATOR,
            "AGENT_DRAIN_TIMEOUT_S": str(drain_s),
        }
        async with _serving(built.image, **env) as serving:
            yield serving


@container
async def test_image_serves_a_signed_call_and_drains_on_sigterm(running: Running) -> None:
    grace_s, _ = _grace_and_drain()
    signed = SimCallOptions(auth_token=TOKEN)
    async with httpx.AsyncClient(base_url=running.base_url, timeout=5) as http:
        await _wait_ready(http)
        assert (await http.post("/vobiz/answer", data={"CallUUID": "unsigned"})).status_code == 403

        carrier = CarrierSim(running.base_url, http=http)
        first = await carrier.place_call([CallerAudio.silence(1500)], signed)
        await first.wait_bot_audio(250, timeout=15)
        await first.hangup()
        assert first.protocol_errors == []

        console = {"Authorization": f"Bearer {OPERATOR}"}

        async def recorded() -> bool:
            live = (await http.get("/console/live.json", headers=console)).json()
            return any(row["call_id"] == first.call_uuid for row in live["recent"])

        await _poll("the first call's record is in the console", 15, recorded)
        page = await http.get(f"/console/calls/{first.call_uuid}", headers=console)
        assert page.status_code == 200 and first.call_uuid in page.text

        # SIGTERM with a call in progress: readiness drops, the call carries on until the caller hangs up,
        # then the process exits 0, well inside the Deployment's grace period.
        second = await carrier.place_call([CallerAudio.silence(1000)], signed)
        await second.wait_bot_audio(250, timeout=15)
        code, out = await _podman("kill", "--signal", "TERM", running.name)
        assert code == 0, out
        signalled = time.monotonic()

        async def draining() -> bool:
            reply = await http.get("/readyz")
            return reply.status_code == 503 and bool(reply.json()["draining"])

        await _poll("/readyz reports draining", 10, draining)
        heard = second.played_ms
        second.say(CallerAudio.tone(440, 600))  # the caller speaks and is still answered while draining
        await second.wait_bot_audio(heard + 200, timeout=15)
        assert not second.ended.is_set()
        await second.hangup()
        await carrier.aclose()

    code, out = await _podman("wait", running.name, timeout=grace_s)
    exited_s = time.monotonic() - signalled
    print(f"exit {out.strip()} {exited_s:.1f} s after SIGTERM (grace period {grace_s} s)")
    assert code == 0 and out.strip() == "0", out
    assert exited_s < grace_s
    _, logs = await _podman("logs", running.name)
    assert "draining before shutdown" in logs

    database = Database(f"sqlite+aiosqlite:///{running.var}/agent.db")
    try:
        detail = await CallStore(database).get_call(second.call_uuid)
    finally:
        await database.aclose()
    assert detail is not None, "the drained call's record was not saved before exit"
    assert detail.record.end_reason not in ("drain", "shutdown", "internal_error"), detail.record.end_reason


@container
async def test_default_command_passes_the_image_health_check(built: Built) -> None:
    """The image's own CMD and HEALTHCHECK, as Docker and compose run them: port 8080 in a private network
    namespace (so nothing on this host's 8080 matters), checked by `podman healthcheck run`."""
    name = f"voice-agent-health-{uuid.uuid4().hex[:8]}"
    env = ["--env", "OPENAI_API_KEY=sk-dummy-not-used", "--env", "OPENAI_BASE_URL=http://127.0.0.1:9/v1"]
    env += ["--env", "AGENT_INSECURE_WEBHOOKS=true"]  # no Vobiz token here: the image would refuse to start
    var = _var_dir()  # for SQLite, the default; the root is read-only
    options = ["--detach", "--name", name, "--network", "none", *ULIMITS, *HARDENED, "--volume", f"{var}:/app/var"]
    code, out = await _podman("run", *options, *env, built.image)
    assert code == 0, out
    try:

        async def healthy() -> bool:
            if (await _podman("healthcheck", "run", name))[0] == 0:
                return True
            _, state = await _podman("inspect", "--format", "{{.State.Status}}", name)
            if state.strip() != "running":
                raise AssertionError(f"the container is {state.strip()}:\n{(await _podman('logs', name))[1][-3000:]}")
            return False

        await _poll("`podman healthcheck run` passes", 60, healthy)
        _, logs = await _podman("logs", name)
        assert f"Uvicorn running on http://0.0.0.0:{PORT}" in logs
    finally:
        await _podman("rm", "--force", "--time", "0", name)
        shutil.rmtree(var, ignore_errors=True)


@container
async def test_image_without_a_key_answers_with_tones(built: Built) -> None:
    """No OPENAI_API_KEY and no sim extra: the embedded engine says so in one line and still answers calls."""
    unsigned = {"AGENT_INSECURE_WEBHOOKS": "true"}  # unsigned webhooks, as from this test's carrier
    async with (
        _serving(built.image, **unsigned) as serving,
        httpx.AsyncClient(base_url=serving.base_url, timeout=5) as http,
    ):
        await _wait_ready(http)
        carrier = CarrierSim(serving.base_url, http=http)
        call = await carrier.place_call([CallerAudio.silence(1000)])
        await call.wait_bot_audio(250, timeout=15)
        await call.hangup()
        await carrier.aclose()
        assert call.protocol_errors == []
        _, logs = await _podman("logs", serving.name)
    assert sum("replying with tones" in line for line in logs.splitlines()) == 1, logs
    assert "Traceback" not in logs


# --- the deployment files ----------------------------------------------------------------------------------


def test_kubernetes_manifests_are_valid_and_match_the_image() -> None:
    import kubernetes_validate

    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                kubernetes_validate.validate(document, kubernetes_validate.latest_version(), strict=True)

    deployment = _deployment()
    pod = deployment["spec"]["template"]["spec"]
    agent = _agent_container(deployment)
    ports = {p["name"]: p["containerPort"] for p in agent["ports"]}
    assert ports == {"http": PORT}
    assert agent["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert agent["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": UID}
    assert agent["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    mounts = {m["mountPath"] for m in agent["volumeMounts"]}
    assert {"/tmp", "/app/var/recordings"} <= mounts  # the only places it writes (besides SQLite, unused here)
    grace, drain = _grace_and_drain()
    assert grace >= drain + 30, "the grace period must cover the drain plus the spoken wrap-ups"
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(PORT)


def test_compose_file_is_valid_and_matches_the_image() -> None:
    done = _run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", "compose.yaml"],
        timeout=60,
        cwd=DEPLOY,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    agent = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["agent"]
    assert (DEPLOY / agent["build"]["context"] / agent["build"]["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    assert [p.rsplit(":", 1)[-1] for p in agent["ports"]] == [str(PORT)]
    assert "user" not in agent  # the image's non-root user
    assert agent["read_only"] is True and agent["cap_drop"] == ["ALL"] and agent["tmpfs"] == ["/tmp"]
    assert agent["security_opt"] == ["no-new-privileges:true"]
    drain = int(agent["environment"]["AGENT_DRAIN_TIMEOUT_S"])
    match = re.fullmatch(r"(\d+)s", agent["stop_grace_period"])
    assert match and int(match.group(1)) >= drain + 30


def test_dockerfile_declares_what_the_manifests_rely_on() -> None:
    """The image tests check the built image; this keeps the Dockerfile readable for the same facts."""
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(rf"^EXPOSE {PORT}$", text, re.M)
    assert re.search(rf"^USER {UID}:{UID}$", text, re.M)
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", text, re.M)
    assert f"127.0.0.1:{PORT}/healthz" in text
    assert '"--port", "' + str(PORT) + '"' in text
