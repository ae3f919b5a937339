"""Vobiz webhook signatures: known answers, URL handling, and every way a request can fail to verify."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
from collections.abc import Callable

import pytest
from starlette.datastructures import Headers

from agent.protocol.vobiz.signature import (
    SignatureCheck,
    base_url,
    new_nonce,
    sign_v2,
    sign_v3,
    signature_headers,
    verify_signature,
)

TOKEN = "SAtestToken123"
MAIN_TOKEN = "MAparentToken456"
URL = "https://agent.example.com/vobiz/answer"
NONCE = "12345678901234567890"

# Computed with `printf '%s' "$URL.$NONCE" | openssl dgst -sha256 -hmac "$TOKEN" -binary | base64`
# (and without the dot for V2): an implementation independent of Python's hmac module.
OPENSSL_V3 = "WQNAfSWCmJbLa/rnNvbPVW5N0t/smuX1z1550d2Sb90="
OPENSSL_V2 = "r/3xGvA+OFR1XtinTSNE7egGYseak5uV7/yM5vFcCWQ="


def _reference(token: str, message: str) -> str:
    return base64.b64encode(hmac.new(token.encode(), message.encode(), hashlib.sha256).digest()).decode()


# ------------------------------------------------------------------------------------ known answers


def test_v3_known_answer() -> None:
    assert sign_v3(TOKEN, URL, NONCE) == _reference(TOKEN, f"{URL}.{NONCE}") == OPENSSL_V3


def test_v2_known_answer() -> None:
    assert sign_v2(TOKEN, URL, NONCE) == _reference(TOKEN, f"{URL}{NONCE}") == OPENSSL_V2


def test_signing_ignores_query_string() -> None:
    assert sign_v3(TOKEN, f"{URL}?CallUUID=abc&x=1", NONCE) == OPENSSL_V3
    assert sign_v2(TOKEN, f"{URL}?CallUUID=abc#frag", NONCE) == OPENSSL_V2


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://h.example/a/b?x=1&y=2", "https://h.example/a/b"),
        ("https://h.example/a/b#frag", "https://h.example/a/b"),
        ("https://h.example/a/b?x=1#frag?z", "https://h.example/a/b"),
        ("https://h.example/a/b/", "https://h.example/a/b/"),
        ("https://h.example:8443/A/b?", "https://h.example:8443/A/b"),
        ("https://h.example", "https://h.example"),
    ],
)
def test_base_url(url: str, expected: str) -> None:
    assert base_url(url) == expected


# ------------------------------------------------------------------------------------- generation


def test_signature_headers_default_shape() -> None:
    headers = signature_headers(TOKEN, URL)
    assert set(headers) == {
        "X-Vobiz-Signature-V3",
        "X-Vobiz-Signature-V3-Nonce",
        "X-Vobiz-Signature-V2",
        "X-Vobiz-Signature-V2-Nonce",
    }
    for nonce_header in ("X-Vobiz-Signature-V3-Nonce", "X-Vobiz-Signature-V2-Nonce"):
        nonce = headers[nonce_header]
        assert len(nonce) == 20 and nonce.isdigit()
    v3_nonce = headers["X-Vobiz-Signature-V3-Nonce"]
    assert headers["X-Vobiz-Signature-V3"] == _reference(TOKEN, f"{URL}.{v3_nonce}")
    v2_nonce = headers["X-Vobiz-Signature-V2-Nonce"]
    assert headers["X-Vobiz-Signature-V2"] == _reference(TOKEN, f"{URL}{v2_nonce}")


def test_signature_headers_fixed_nonce_and_ma_variants() -> None:
    headers = signature_headers(TOKEN, URL, nonce=NONCE, main_token=MAIN_TOKEN)
    assert headers["X-Vobiz-Signature-V3"] == OPENSSL_V3
    assert headers["X-Vobiz-Signature-V2"] == OPENSSL_V2
    assert headers["X-Vobiz-Signature-MA-V3"] == _reference(MAIN_TOKEN, f"{URL}.{NONCE}")
    assert headers["X-Vobiz-Signature-MA-V2"] == _reference(MAIN_TOKEN, f"{URL}{NONCE}")


def test_signature_headers_single_version() -> None:
    headers = signature_headers(TOKEN, URL, nonce=NONCE, versions=("v2",))
    assert headers == {"X-Vobiz-Signature-V2": OPENSSL_V2, "X-Vobiz-Signature-V2-Nonce": NONCE}


def test_signature_headers_rejects_unknown_version() -> None:
    with pytest.raises(ValueError, match="v1"):
        signature_headers(TOKEN, URL, versions=("v1",))  # type: ignore[arg-type]


def test_nonces_are_random_20_digits() -> None:
    nonces = {new_nonce() for _ in range(50)}
    assert len(nonces) == 50
    assert all(len(n) == 20 and n.isdigit() for n in nonces)


# ------------------------------------------------------------------------------------ verification


def test_roundtrip_prefers_v3() -> None:
    check = verify_signature(signature_headers(TOKEN, URL), URL, [TOKEN])
    assert check == SignatureCheck(ok=True, matched="v3")
    assert check


def test_v2_alone_verifies() -> None:
    check = verify_signature(signature_headers(TOKEN, URL, versions=("v2",)), URL, [TOKEN])
    assert check == SignatureCheck(ok=True, matched="v2")


def test_different_query_still_verifies() -> None:
    headers = signature_headers(TOKEN, f"{URL}?CallUUID=one")
    assert verify_signature(headers, f"{URL}?CallUUID=two&Event=Hangup", [TOKEN]).ok
    assert verify_signature(headers, URL, [TOKEN]).ok


def test_missing_headers() -> None:
    check = verify_signature({"Content-Type": "application/x-www-form-urlencoded"}, URL, [TOKEN])
    assert check == SignatureCheck(ok=False, reason="missing")
    assert not check


def test_signature_without_nonce_counts_as_missing() -> None:
    headers = signature_headers(TOKEN, URL, nonce=NONCE)
    del headers["X-Vobiz-Signature-V3-Nonce"], headers["X-Vobiz-Signature-V2-Nonce"]
    assert verify_signature(headers, URL, [TOKEN]) == SignatureCheck(ok=False, reason="missing")


def test_empty_signature_counts_as_missing() -> None:
    headers = {"X-Vobiz-Signature-V3": " , ", "X-Vobiz-Signature-V3-Nonce": NONCE}
    assert verify_signature(headers, URL, [TOKEN]).reason == "missing"


def test_legacy_v1_header_is_not_accepted() -> None:
    assert verify_signature({"X-Vobiz-Signature": "anything"}, URL, [TOKEN]).reason == "missing"


@pytest.mark.parametrize(
    "tampered",
    [
        "https://agent.example.com/vobiz/answer/",
        "https://agent.example.com/vobiz/hangup",
        "https://evil.example.com/vobiz/answer",
        "http://agent.example.com/vobiz/answer",
        "https://agent.example.com:8443/vobiz/answer",
        "https://agent.example.com/Vobiz/answer",
    ],
)
def test_tampered_url_mismatches(tampered: str) -> None:
    headers = signature_headers(TOKEN, URL)
    assert verify_signature(headers, tampered, [TOKEN]) == SignatureCheck(ok=False, reason="mismatch")


def test_wrong_token_mismatches() -> None:
    headers = signature_headers(TOKEN, URL)
    assert verify_signature(headers, URL, ["SOMEotherToken"]).reason == "mismatch"


def test_tampered_nonce_mismatches() -> None:
    headers = signature_headers(TOKEN, URL, nonce=NONCE)
    headers["X-Vobiz-Signature-V3-Nonce"] = "12345678901234567891"
    headers["X-Vobiz-Signature-V2-Nonce"] = "12345678901234567891"
    assert verify_signature(headers, URL, [TOKEN]).reason == "mismatch"


def test_v2_signature_under_v3_header_mismatches() -> None:
    headers = {"X-Vobiz-Signature-V3": OPENSSL_V2, "X-Vobiz-Signature-V3-Nonce": NONCE}
    assert verify_signature(headers, URL, [TOKEN]).reason == "mismatch"


def test_non_ascii_header_value_does_not_crash() -> None:
    headers = {"X-Vobiz-Signature-V3": "sïgnätüre", "X-Vobiz-Signature-V3-Nonce": NONCE}
    assert verify_signature(headers, URL, [TOKEN]).reason == "mismatch"


def test_no_tokens_is_a_configuration_error() -> None:
    with pytest.raises(ValueError):
        verify_signature(signature_headers(TOKEN, URL), URL, [], [])
    with pytest.raises(ValueError):
        verify_signature(signature_headers(TOKEN, URL), URL, [""])


# --------------------------------------------------------------------------------- main account


def _ma_only(version: str) -> dict[str, str]:
    """Only the MA header and its nonce, as if the sub-account signature were unusable."""
    headers = signature_headers("SAunknownSubToken", URL, main_token=MAIN_TOKEN)
    upper = version.upper()
    return {
        f"X-Vobiz-Signature-MA-{upper}": headers[f"X-Vobiz-Signature-MA-{upper}"],
        f"X-Vobiz-Signature-{upper}-Nonce": headers[f"X-Vobiz-Signature-{upper}-Nonce"],
        f"X-Vobiz-Signature-{upper}": "bm90IGEgc2lnbmF0dXJl",
    }


@pytest.mark.parametrize("version", ["v3", "v2"])
def test_ma_variant_with_main_token(version: str) -> None:
    check = verify_signature(_ma_only(version), URL, [TOKEN], main_tokens=[MAIN_TOKEN])
    assert check.ok and check.matched == f"ma-{version}" and check.reason is None


@pytest.mark.parametrize("version", ["v3", "v2"])
def test_ma_variant_needs_the_main_token(version: str) -> None:
    assert verify_signature(_ma_only(version), URL, [TOKEN]).reason == "mismatch"


def test_ma_variant_also_accepts_sub_account_tokens() -> None:
    # A main account's own callbacks: the configured token is the main token.
    headers = signature_headers(MAIN_TOKEN, URL, main_token=MAIN_TOKEN)
    headers = {k: v for k, v in headers.items() if "-MA-" in k or k.endswith("-Nonce")}
    assert verify_signature(headers, URL, [MAIN_TOKEN]) == SignatureCheck(ok=True, matched="ma-v3")


def test_ma_v3_uses_v3_nonce_header() -> None:
    nonce3, nonce2 = "11111111111111111111", "22222222222222222222"
    headers = {
        "X-Vobiz-Signature-MA-V3": sign_v3(MAIN_TOKEN, URL, nonce3),
        "X-Vobiz-Signature-V3-Nonce": nonce3,
        "X-Vobiz-Signature-V2-Nonce": nonce2,
    }
    assert verify_signature(headers, URL, [], [MAIN_TOKEN]).matched == "ma-v3"
    swapped = {**headers, "X-Vobiz-Signature-MA-V3": sign_v3(MAIN_TOKEN, URL, nonce2)}
    assert verify_signature(swapped, URL, [], [MAIN_TOKEN]).reason == "mismatch"


# ------------------------------------------------------------------------- rotation and headers


def test_comma_separated_signatures() -> None:
    headers = {
        "X-Vobiz-Signature-V3": f"{sign_v3('SAoldToken', URL, NONCE)}, {OPENSSL_V3}",
        "X-Vobiz-Signature-V3-Nonce": NONCE,
    }
    assert verify_signature(headers, URL, [TOKEN]) == SignatureCheck(ok=True, matched="v3")


def test_several_configured_tokens() -> None:
    headers = signature_headers(TOKEN, URL)
    assert verify_signature(headers, URL, ["SAoldToken", TOKEN]).ok


@pytest.mark.parametrize("transform", [str.lower, str.upper, lambda s: s])
def test_header_names_are_case_insensitive(transform: Callable[[str], str]) -> None:
    headers = {transform(k): v for k, v in signature_headers(TOKEN, URL).items()}
    assert verify_signature(headers, URL, [TOKEN]).ok


def test_starlette_headers() -> None:
    raw = [(k.lower().encode(), v.encode()) for k, v in signature_headers(TOKEN, URL).items()]
    assert verify_signature(Headers(raw=raw), URL, [TOKEN]).ok


def test_starlette_repeated_signature_headers() -> None:
    good = signature_headers(TOKEN, URL, nonce=NONCE, versions=("v3",))
    raw = [
        (b"x-vobiz-signature-v3", b"bm90IGEgc2lnbmF0dXJl"),
        (b"x-vobiz-signature-v3", good["X-Vobiz-Signature-V3"].encode()),
        (b"x-vobiz-signature-v3-nonce", NONCE.encode()),
    ]
    assert verify_signature(Headers(raw=raw), URL, [TOKEN]).matched == "v3"


def test_check_is_frozen_and_carries_no_secret() -> None:
    check = verify_signature(signature_headers(TOKEN, URL), URL, [TOKEN])
    with pytest.raises(dataclasses.FrozenInstanceError):
        check.ok = False  # type: ignore[misc]
    assert TOKEN not in repr(check)
