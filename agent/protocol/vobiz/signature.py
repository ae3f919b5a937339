"""Vobiz webhook signatures: V2, V3 and their main-account (MA) variants.

Vobiz signs only the callback URL with its query string stripped, plus a random nonce (protocol doc §6):

* V2: ``base64(HMAC-SHA256(auth_token, base_url + nonce))``
* V3: ``base64(HMAC-SHA256(auth_token, base_url + "." + nonce))``
* MA-V2 / MA-V3: the same, keyed with the parent (main) account token; MA-V3 reuses the V3 nonce header
  and MA-V2 the V2 nonce header.

The POST body is not covered and there is no timestamp, so a valid signature proves the URL came from
someone holding the token, not that the body is intact or fresh. The legacy SHA-1 ``X-Vobiz-Signature``
(V1) is deliberately not accepted.

Signing uses the URL exactly as given (minus query and fragment); nothing is normalised. Behind a proxy
or load balancer the caller must rebuild the public ``https://host/path`` exactly as Vobiz called it,
otherwise every signature mismatches. Nothing here logs or stores tokens.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

SignatureVersion = Literal["v2", "v3"]
MatchedHeader = Literal["v3", "v2", "ma-v3", "ma-v2"]
FailureReason = Literal["missing", "mismatch"]

HEADER_V2: Final = "X-Vobiz-Signature-V2"
HEADER_V2_NONCE: Final = "X-Vobiz-Signature-V2-Nonce"
HEADER_V3: Final = "X-Vobiz-Signature-V3"
HEADER_V3_NONCE: Final = "X-Vobiz-Signature-V3-Nonce"
HEADER_MA_V2: Final = "X-Vobiz-Signature-MA-V2"
HEADER_MA_V3: Final = "X-Vobiz-Signature-MA-V3"

NONCE_DIGITS: Final = 20

# (matched name, signature header, nonce header, signer, keyed with main tokens?) in the order tried.
_VARIANTS: Final[tuple[tuple[MatchedHeader, str, str, SignatureVersion, bool], ...]] = (
    ("v3", HEADER_V3, HEADER_V3_NONCE, "v3", False),
    ("v2", HEADER_V2, HEADER_V2_NONCE, "v2", False),
    ("ma-v3", HEADER_MA_V3, HEADER_V3_NONCE, "v3", True),
    ("ma-v2", HEADER_MA_V2, HEADER_V2_NONCE, "v2", True),
)


@dataclass(frozen=True, slots=True)
class SignatureCheck:
    """Outcome of :func:`verify_signature`; truthy only when a signature matched.

    ``matched`` names the header that verified (``"v3"``, ``"v2"``, ``"ma-v3"``, ``"ma-v2"``). ``reason``
    is ``"missing"`` when no complete signature + nonce pair was present and ``"mismatch"`` when at least
    one was present but none verified.
    """

    ok: bool
    matched: MatchedHeader | None = None
    reason: FailureReason | None = None

    def __bool__(self) -> bool:
        return self.ok


def base_url(url: str) -> str:
    """Return ``url`` without its query string and fragment: the part Vobiz signs.

    Plain string surgery rather than urllib round-tripping, so the rest of the URL stays byte-for-byte
    what the caller passed.
    """
    return url.split("#", 1)[0].split("?", 1)[0]


def _sign(token: str, message: str) -> str:
    digest = hmac.new(token.encode("utf-8"), message.encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def sign_v2(token: str, url: str, nonce: str) -> str:
    """V2 signature: base64(HMAC-SHA256(token, base_url + nonce))."""
    return _sign(token, base_url(url) + nonce)


def sign_v3(token: str, url: str, nonce: str) -> str:
    """V3 signature: base64(HMAC-SHA256(token, base_url + "." + nonce))."""
    return _sign(token, base_url(url) + "." + nonce)


def _signer(version: SignatureVersion, token: str, url: str, nonce: str) -> str:
    return sign_v3(token, url, nonce) if version == "v3" else sign_v2(token, url, nonce)


def new_nonce() -> str:
    """A fresh 20-digit nonce, the shape Vobiz uses."""
    return f"{secrets.randbelow(10**NONCE_DIGITS):0{NONCE_DIGITS}d}"


def signature_headers(
    token: str,
    url: str,
    *,
    nonce: str | None = None,
    versions: Sequence[SignatureVersion] = ("v3", "v2"),
    main_token: str | None = None,
) -> dict[str, str]:
    """Headers Vobiz would send for a callback to ``url``; for simulators and tests.

    Each version gets its own random nonce unless ``nonce`` is given. With ``main_token`` the MA variants
    of the same versions are added, sharing that version's nonce header as Vobiz does.
    """
    headers: dict[str, str] = {}
    for version in versions:
        if version not in ("v2", "v3"):
            raise ValueError(f"unknown signature version {version!r}; expected 'v2' or 'v3'")
        version_nonce = nonce if nonce is not None else new_nonce()
        sig_header, nonce_header, ma_header = (
            (HEADER_V3, HEADER_V3_NONCE, HEADER_MA_V3)
            if version == "v3"
            else (HEADER_V2, HEADER_V2_NONCE, HEADER_MA_V2)
        )
        headers[sig_header] = _signer(version, token, url, version_nonce)
        headers[nonce_header] = version_nonce
        if main_token is not None:
            headers[ma_header] = _signer(version, main_token, url, version_nonce)
    return headers


def _lowered(headers: Mapping[str, str]) -> dict[str, str]:
    """Case-insensitive view; repeated headers (multi-valued starlette Headers) are comma-joined."""
    out: dict[str, str] = {}
    for key, value in headers.items():
        name = key.lower()
        out[name] = f"{out[name]},{value}" if name in out else value
    return out


def _unique(tokens: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(t for t in tokens if t))


def _matches(candidates: Sequence[bytes], expected: str) -> bool:
    want = expected.encode("ascii")
    # No early exit: every candidate is compared, each in constant time.
    hit = False
    for candidate in candidates:
        hit |= hmac.compare_digest(candidate, want)
    return hit


def verify_signature(
    headers: Mapping[str, str],
    url: str,
    tokens: Sequence[str],
    main_tokens: Sequence[str] = (),
) -> SignatureCheck:
    """Check a Vobiz callback's signature headers against ``url``.

    Tries V3, V2 (keyed with ``tokens``), then MA-V3, MA-V2 (keyed with ``main_tokens`` and ``tokens``).
    Several tokens are allowed so a token rotation never rejects live traffic, and a header may carry
    several comma-separated signatures for the same reason; any match wins. ``headers`` may be starlette
    ``Headers`` or a plain dict in any case. ``url`` must be the public URL Vobiz called (see module doc).
    Raises ValueError when no token is configured at all, because that is a deployment bug, not a bad
    request.
    """
    keys = _unique(tokens)
    ma_keys = _unique([*main_tokens, *tokens])
    if not ma_keys:
        raise ValueError("verify_signature needs at least one auth token")
    lowered = _lowered(headers)
    seen_any = False
    for matched, sig_header, nonce_header, version, is_ma in _VARIANTS:
        raw = lowered.get(sig_header.lower())
        nonce = lowered.get(nonce_header.lower())
        if raw is None or nonce is None:
            continue
        candidates = [
            s.strip().encode("utf-8", "replace") for s in raw.split(",") if s.strip()
        ]  # base64 never contains commas, so splitting is safe
        nonce = nonce.strip()
        if not candidates or not nonce:
            continue
        seen_any = True
        for token in ma_keys if is_ma else keys:
            if _matches(candidates, _signer(version, token, url, nonce)):
                return SignatureCheck(ok=True, matched=matched)
    return SignatureCheck(ok=False, reason="mismatch" if seen_any else "missing")
