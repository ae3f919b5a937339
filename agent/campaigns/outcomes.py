"""How Vobiz's callback fields map onto a dial attempt's result and an answering-machine verdict.

Vobiz's docs name the final `CallStatus` values of an outbound call (busy, failed, timeout, no-answer, completed)
and real code handles `HangupCause`s such as USER_BUSY, NO_ANSWER and CALL_REJECTED; both are read, so either
spelling (and a Plivo-style cause) lands on the same result.
"""

from __future__ import annotations

from collections.abc import Mapping

_BUSY_CAUSES = frozenset({"USER_BUSY", "BUSY"})
_NO_ANSWER_CAUSES = frozenset({"NO_ANSWER", "NO_USER_RESPONSE", "ORIGINATOR_CANCEL", "ALLOTTED_TIMEOUT", "TIMEOUT"})
_FAILED_CAUSES = frozenset(
    {
        "CALL_REJECTED",
        "SUBSCRIBER_ABSENT",
        "UNALLOCATED_NUMBER",
        "INVALID_NUMBER_FORMAT",
        "NETWORK_OUT_OF_ORDER",
        "NORMAL_TEMPORARY_FAILURE",
        "RECOVERY_ON_TIMER_EXPIRE",
        "DESTINATION_OUT_OF_ORDER",
        "NO_ROUTE_DESTINATION",
        "SERVICE_UNAVAILABLE",
    }
)


def machine_verdict(params: Mapping[str, str]) -> str | None:
    """'machine', 'person' or None (no detection result in these fields). Accepts `Machine=true|false` (the
    documented field), and `AnsweredBy`/`MachineDetection` spellings seen in Plivo-style integrations."""
    for key in ("Machine", "machine", "MachineDetection", "AnsweredBy"):
        value = params.get(key, "").strip().lower()
        if not value:
            continue
        if value in ("true", "1", "yes", "machine", "machine_start", "machine_end_beep", "fax"):
            return "machine"
        if value in ("false", "0", "no", "human", "person"):
            return "person"
    return None


def classify(params: Mapping[str, str], *, answered: bool) -> str:
    """The result of an attempt from its hangup callback: person, machine, busy, no_answer or failed."""
    status = params.get("CallStatus", "").strip().lower().replace("_", "-")
    cause = params.get("HangupCause", "").strip().upper().replace(" ", "_")
    if status == "busy" or cause in _BUSY_CAUSES:
        return "busy"
    if status in ("no-answer", "timeout") or cause in _NO_ANSWER_CAUSES:
        return "no_answer"
    if status == "failed" or cause in _FAILED_CAUSES:
        return "failed"
    if "MACHINE" in cause or machine_verdict(params) == "machine":
        return "machine"
    try:
        duration = float(params.get("Duration", "") or 0)
    except ValueError:
        duration = 0.0
    return "person" if answered or duration > 0 else "no_answer"


def duration_of(params: Mapping[str, str]) -> float | None:
    try:
        return float(params["Duration"])
    except (KeyError, ValueError):
        return None
