"""The baseline: a deliberately naive Vobiz ⇄ Realtime relay, run in its own process like the agent.

Run by the bench as ``python -m agent.testkit.bench.relay --port P --engine ws://127.0.0.1:E/v1/realtime``. Same server
stack as the agent (uvicorn + Starlette), none of its care: no pacing, no checkpoints, no truncation, no
validation, no reconnects. The answer webhook returns a bidirectional ``<Stream>``; the stream socket opens a
Realtime session (a minimal ``session.update`` with the agent's turn detection, then a greeting), forwards
every ``media`` payload as one ``input_audio_buffer.append``, every ``response.output_audio.delta`` as one
``playAudio``, and answers ``speech_started`` with ``clearAudio``. μ-law passes through as is; L16 goes through
one soxr stream per direction because the GA API only takes 24 kHz PCM.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
from typing import Any

import numpy as np
import soxr
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from agent.testkit.bench.wire import REALTIME_MODEL, TRANSCRIPTION_MODEL, TURN_DETECTION, content_rate, is_mulaw

MODEL_RATE = 24000


class Relay:
    def __init__(self, public_ws: str, engine_url: str, content_type: str) -> None:
        self.public_ws = public_ws
        self.engine_url = f"{engine_url}?model={REALTIME_MODEL}"
        self.content_type = content_type
        self.mulaw = is_mulaw(content_type)
        self.rate = content_rate(content_type)
        self.encoding = content_type.split(";")[0]
        model_format: dict[str, Any] = (
            {"type": "audio/pcmu"} if self.mulaw else {"type": "audio/pcm", "rate": MODEL_RATE}
        )
        self.session_update = json.dumps(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "output_modalities": ["audio"],
                    "audio": {
                        "input": {
                            "format": model_format,
                            "transcription": {"model": TRANSCRIPTION_MODEL},
                            "turn_detection": TURN_DETECTION,
                        },
                        "output": {"format": model_format},
                    },
                },
            }
        )

    async def answer(self, request: Request) -> Response:
        form = await request.form() if request.method == "POST" else request.query_params
        if form.get("Event") == "Hangup":
            return Response('<?xml version="1.0" encoding="UTF-8"?>\n<Response/>', media_type="application/xml")
        xml = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Stream bidirectional="true" audioTrack="inbound" '
            f'keepCallAlive="true" contentType="{self.content_type}">{self.public_ws}/stream</Stream></Response>'
        )
        return Response(xml, media_type="application/xml")

    async def stream(self, ws: WebSocket) -> None:
        await ws.accept()
        try:
            start = json.loads(await ws.receive_text())
            stream_id = start["start"]["streamId"]
        except (WebSocketDisconnect, ValueError, KeyError, TypeError):
            with contextlib.suppress(Exception):
                await ws.close()
            return
        try:
            async with connect(
                self.engine_url,
                additional_headers={"Authorization": "Bearer dummy"},
                compression=None,
                max_size=None,
                ping_interval=None,
                open_timeout=10,
                close_timeout=1,
            ) as model:
                await model.send(self.session_update)
                await model.send('{"type":"response.create"}')
                tasks = [
                    asyncio.create_task(self._caller_to_model(ws, model)),
                    asyncio.create_task(self._model_to_caller(ws, model, stream_id)),
                ]
                try:
                    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for task in tasks:
                        task.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
        except (OSError, ConnectionClosed, TimeoutError):
            pass
        finally:
            with contextlib.suppress(Exception):
                await ws.close()

    async def _caller_to_model(self, ws: WebSocket, model: ClientConnection) -> None:
        resampler = None if self.mulaw else soxr.ResampleStream(self.rate, MODEL_RATE, 1, dtype="int16", quality="LQ")
        while True:
            try:
                msg = json.loads(await ws.receive_text())
            except (WebSocketDisconnect, RuntimeError):
                return
            if msg.get("event") != "media":
                continue
            payload: str = msg["media"]["payload"]
            if resampler is not None:
                samples = np.frombuffer(base64.b64decode(payload), dtype="<i2")
                payload = base64.b64encode(resampler.resample_chunk(samples).astype("<i2").tobytes()).decode()
            await model.send('{"type":"input_audio_buffer.append","audio":"' + payload + '"}')

    async def _model_to_caller(self, ws: WebSocket, model: ClientConnection, stream_id: str) -> None:
        resampler = None if self.mulaw else soxr.ResampleStream(MODEL_RATE, self.rate, 1, dtype="int16", quality="LQ")
        media = f'"contentType":"{self.encoding}","sampleRate":{self.rate}'
        head = f'{{"event":"playAudio","streamId":"{stream_id}","media":{{{media},"payload":"'
        clear = json.dumps({"event": "clearAudio", "streamId": stream_id})
        async for raw in model:
            event = json.loads(raw)
            kind = event.get("type")
            if kind == "response.output_audio.delta":
                payload: str = event["delta"]
                if resampler is not None:
                    samples = np.frombuffer(base64.b64decode(payload), dtype="<i2")
                    payload = base64.b64encode(resampler.resample_chunk(samples).astype("<i2").tobytes()).decode()
                await ws.send_text(head + payload + '"}}')
            elif kind == "input_audio_buffer.speech_started":
                await ws.send_text(clear)


def create_app(relay: Relay) -> Starlette:
    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/answer", relay.answer, methods=["GET", "POST"]),
            WebSocketRoute("/stream", relay.stream),
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--engine", required=True, help="ws://127.0.0.1:PORT/v1/realtime")
    parser.add_argument("--content-type", default="audio/x-mulaw;rate=8000")
    args = parser.parse_args(argv)
    relay = Relay(f"ws://127.0.0.1:{args.port}", args.engine, args.content_type)
    uvicorn.run(
        create_app(relay),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        ws_max_size=1 << 20,
        lifespan="off",
    )


if __name__ == "__main__":
    main()
