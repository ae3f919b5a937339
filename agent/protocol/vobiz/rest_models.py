"""What the Vobiz REST API answers (make-call, transfer, streams), as tolerant pydantic models with no I/O."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class VobizModel(BaseModel):
    # Vobiz adds fields over time and its doc revisions disagree; unknown fields are kept, not rejected.
    model_config = ConfigDict(extra="allow")


class MakeCallResponse(VobizModel):
    """``POST /Call/`` reply; ``request_uuid`` is the call UUID (a list for bulk ``a<b`` dials)."""

    api_id: str | None = None
    request_uuid: str | list[str]
    message: str = ""

    @property
    def request_uuids(self) -> list[str]:
        """Always a list, so bulk and single dials read the same way."""
        return [self.request_uuid] if isinstance(self.request_uuid, str) else list(self.request_uuid)


class TransferResponse(VobizModel):
    """Transfer reply (``{"api_id", "message": "call transferred", "call_uuid"}``)."""

    api_id: str | None = None
    message: str = ""
    call_uuid: str | None = None


class StartStreamResponse(VobizModel):
    """Start-stream reply (``{"stream_id", "message": "Stream started"}``)."""

    api_id: str | None = None
    stream_id: str
    message: str = ""


class StreamObject(VobizModel):
    """One audio stream as Vobiz reports it; ``status`` is ``in-progress``, ``completed`` or ``failed``.

    Everything but ``stream_id`` is optional because the doc revisions disagree on the shape.
    """

    api_id: str | None = None
    call_uuid: str | None = None
    stream_id: str
    service_url: str | None = None
    audio_track: str | None = None
    bidirectional: bool | None = None
    content_type: str | None = None
    sampling_rate: int | None = None
    stream_timeout: int | None = None
    status_callback_url: str | None = None
    status_callback_method: str | None = None
    status: str | None = None
    start_time: str | None = None
    end_time: str | None = None
    resource_uri: str | None = None


class StreamList(VobizModel):
    """A page of streams for one call; includes streams that have already stopped."""

    api_id: str | None = None
    page: int | None = None
    per_page: int | None = None
    total: int | None = None
    objects: list[StreamObject] = Field(default_factory=list)
