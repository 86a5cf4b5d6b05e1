"""Tests for :mod:`dimmy_webhooks.signatures` against /work/shared/svix-verification.md."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.datastructures import Headers
from svix.webhooks import Webhook, WebhookVerificationError

from dimmy_webhooks.errors import ConfigError, VerificationError
from dimmy_webhooks.signatures import (
    MAX_SIGNATURE_TOKENS,
    MIN_SECRET_BYTES,
    SignedHeaders,
    VerifiedMessage,
    Verifier,
    decode_secret,
    parse_secrets,
    sign,
    signed_headers,
)

from ..support.fakes import frozen

# Reference vectors from the rules document.
V1_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
V1_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
V1_TS = 1614265330
V1_BODY = b'{"test": 2432232314}'
V1_SIG = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

V2_SECRET = "whsec_plJ3nmyCDGBKInavdOK15jsl"
V2_ID = "msg_loFOjxBNrRLzqYUf"
V2_TS = 1731705121
V2_BODY = b'{"event_type":"ping","data":{"success":true}}'
V2_SIG = "v1,rAvfW3dJ/X/qxhsaXPOyyCGmRKsaKWcsNccKXlIktD0="

V1_KEY = decode_secret(V1_SECRET)
V1_MAC = V1_SIG.removeprefix("v1,")
OTHER_KEY = b"another-key-with-enough-bytes!!"


def v1_verifier(**kwargs: Any) -> Verifier:
    kwargs.setdefault("clock", frozen(V1_TS))
    return Verifier([V1_KEY], **kwargs)


def v1_headers(
    *,
    family: str = "svix",
    msg_id: str = V1_ID,
    ts: str = str(V1_TS),
    sig: str = V1_SIG,
) -> dict[str, str]:
    return {f"{family}-id": msg_id, f"{family}-timestamp": ts, f"{family}-signature": sig}


def reason_of(verifier: Verifier, headers: Any, body: Any) -> str:
    with pytest.raises(VerificationError) as info:
        verifier.verify(headers, body)
    assert type(info.value) is VerificationError
    return info.value.reason


# --------------------------------------------------------------------------- reference vectors


def test_v1_vector_signs_and_verifies() -> None:
    assert sign(V1_KEY, V1_ID, V1_TS, V1_BODY) == V1_SIG
    assert v1_verifier().verify(v1_headers(), V1_BODY) == VerifiedMessage(V1_ID, V1_TS)


def test_v2_vector_signs_and_verifies() -> None:
    key = decode_secret(V2_SECRET)
    assert len(key) == 18
    assert sign(key, V2_ID, V2_TS, V2_BODY) == V2_SIG
    verifier = Verifier([key], clock=frozen(V2_TS))
    headers = {"svix-id": V2_ID, "svix-timestamp": str(V2_TS), "svix-signature": V2_SIG}
    assert verifier.verify(headers, V2_BODY) == VerifiedMessage(V2_ID, V2_TS)


def test_vector_computed_independently_with_stdlib() -> None:
    key = base64.b64decode(V1_SECRET.removeprefix("whsec_"))
    content = f"{V1_ID}.{V1_TS}.".encode() + V1_BODY
    mac = base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
    assert f"v1,{mac}" == V1_SIG


def test_verified_message_is_frozen() -> None:
    message = v1_verifier().verify(v1_headers(), V1_BODY)
    assert (message.msg_id, message.timestamp) == (V1_ID, V1_TS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        message.msg_id = "x"  # type: ignore[misc]


# --------------------------------------------------------------------------- rule 1: headers


def test_webhook_family_accepted() -> None:
    assert v1_verifier().verify(v1_headers(family="webhook"), V1_BODY).msg_id == V1_ID


@pytest.mark.parametrize(
    "names",
    [
        ("SVIX-ID", "SVIX-TIMESTAMP", "SVIX-SIGNATURE"),
        ("Svix-Id", "Svix-Timestamp", "Svix-Signature"),
        ("sViX-iD", "svix-TimeStamp", "SVIX-signature"),
        ("Webhook-Id", "WEBHOOK-TIMESTAMP", "webhook-Signature"),
    ],
)
def test_header_names_in_odd_case_accepted(names: tuple[str, str, str]) -> None:
    headers = dict(zip(names, (V1_ID, str(V1_TS), V1_SIG), strict=True))
    assert v1_verifier().verify(headers, V1_BODY).msg_id == V1_ID


def test_starlette_headers_accepted() -> None:
    headers = Headers(
        raw=[
            (b"content-type", b"application/json"),
            (b"Svix-Id", V1_ID.encode()),
            (b"Svix-Timestamp", str(V1_TS).encode()),
            (b"Svix-Signature", V1_SIG.encode()),
        ]
    )
    assert v1_verifier().verify(headers, V1_BODY).msg_id == V1_ID


def test_duplicate_header_first_value_wins_like_starlette() -> None:
    raw = [
        (b"svix-id", V1_ID.encode()),
        (b"svix-timestamp", str(V1_TS).encode()),
        (b"svix-signature", V1_SIG.encode()),
        (b"svix-signature", b"v1,bogus"),
    ]
    assert v1_verifier().verify(Headers(raw=raw), V1_BODY).msg_id == V1_ID
    raw[2], raw[3] = raw[3], raw[2]
    assert reason_of(v1_verifier(), Headers(raw=raw), V1_BODY) == "no matching signature"


@pytest.mark.parametrize("missing", ["svix-id", "svix-timestamp", "svix-signature"])
def test_missing_header(missing: str) -> None:
    headers = v1_headers()
    del headers[missing]
    assert reason_of(v1_verifier(), headers, V1_BODY) == "missing headers"


@pytest.mark.parametrize("empty", ["svix-id", "svix-timestamp", "svix-signature"])
def test_empty_header_value_is_missing(empty: str) -> None:
    headers = v1_headers()
    headers[empty] = ""
    assert reason_of(v1_verifier(), headers, V1_BODY) == "missing headers"


def test_no_headers_at_all() -> None:
    assert reason_of(v1_verifier(), {}, V1_BODY) == "missing headers"


def test_families_never_mixed_when_neither_set_complete() -> None:
    # svix-id + webhook-timestamp + webhook-signature: no complete set.
    headers = {
        "svix-id": V1_ID,
        "webhook-timestamp": str(V1_TS),
        "webhook-signature": V1_SIG,
    }
    assert reason_of(v1_verifier(), headers, V1_BODY) == "missing headers"
    headers = {"webhook-id": V1_ID, "svix-timestamp": str(V1_TS), "svix-signature": V1_SIG}
    assert reason_of(v1_verifier(), headers, V1_BODY) == "missing headers"


def test_webhook_set_used_whole_when_svix_set_incomplete() -> None:
    # svix-timestamp missing: the webhook-* set is used, including its own id.
    headers = {"svix-id": "msg_other", **v1_headers(family="webhook")}
    assert v1_verifier().verify(headers, V1_BODY).msg_id == V1_ID
    # The svix id is never borrowed: a webhook set whose id differs is judged on its own id.
    headers = {"svix-id": V1_ID, **v1_headers(family="webhook", msg_id="msg_other")}
    assert reason_of(v1_verifier(), headers, V1_BODY) == "no matching signature"


def test_empty_svix_value_falls_back_to_complete_webhook_set() -> None:
    headers = {**v1_headers(family="webhook"), "svix-id": V1_ID, "svix-timestamp": str(V1_TS)}
    headers["svix-signature"] = ""
    assert v1_verifier().verify(headers, V1_BODY).msg_id == V1_ID


def test_complete_svix_set_wins_even_if_webhook_set_is_valid() -> None:
    headers = {**v1_headers(family="webhook"), **v1_headers(sig="v1,AAAA")}
    assert reason_of(v1_verifier(), headers, V1_BODY) == "no matching signature"


# --------------------------------------------------------------------------- message id


def test_message_id_max_length_accepted() -> None:
    msg_id = "m" * 256
    headers = v1_headers(msg_id=msg_id, sig=sign(V1_KEY, msg_id, V1_TS, V1_BODY))
    assert v1_verifier().verify(headers, V1_BODY).msg_id == msg_id


@pytest.mark.parametrize(
    "msg_id", ["m" * 257, "msg_é", "msg\x00", "msg\nid", "msg\tid", "msg\x7f", "msg_😀"]
)
def test_invalid_message_id_rejected(msg_id: str) -> None:
    headers = v1_headers(msg_id=msg_id, sig=sign(V1_KEY, "x", V1_TS, V1_BODY))
    assert reason_of(v1_verifier(), headers, V1_BODY) == "invalid message id"


# --------------------------------------------------------------------------- rule 5: timestamp


@pytest.mark.parametrize("offset", [0, 1, 299, 300, -1, -299, -300])
def test_timestamp_inside_window_accepted(offset: int) -> None:
    ts = V1_TS - offset  # positive offset: the message is that many seconds old
    headers = v1_headers(ts=str(ts), sig=sign(V1_KEY, V1_ID, ts, V1_BODY))
    assert v1_verifier().verify(headers, V1_BODY).timestamp == ts


@pytest.mark.parametrize(
    ("offset", "reason"),
    [(301, "timestamp too old"), (86_400, "timestamp too old"), (-301, "timestamp too new")],
)
def test_timestamp_outside_window_rejected(offset: int, reason: str) -> None:
    ts = V1_TS - offset
    headers = v1_headers(ts=str(ts), sig=sign(V1_KEY, V1_ID, ts, V1_BODY))
    assert reason_of(v1_verifier(), headers, V1_BODY) == reason


def test_window_uses_floor_of_the_clock() -> None:
    assert v1_verifier(clock=frozen(V1_TS + 300.999)).verify(v1_headers(), V1_BODY)
    assert reason_of(v1_verifier(clock=frozen(V1_TS + 301.0)), v1_headers(), V1_BODY) == (
        "timestamp too old"
    )
    assert v1_verifier(clock=frozen(V1_TS - 300.0)).verify(v1_headers(), V1_BODY)
    assert reason_of(v1_verifier(clock=frozen(V1_TS - 300.001)), v1_headers(), V1_BODY) == (
        "timestamp too new"
    )


def test_custom_tolerance() -> None:
    verifier = v1_verifier(tolerance_seconds=10, clock=frozen(V1_TS + 11))
    assert reason_of(verifier, v1_headers(), V1_BODY) == "timestamp too old"
    assert v1_verifier(tolerance_seconds=10, clock=frozen(V1_TS + 10)).verify(v1_headers(), V1_BODY)


@pytest.mark.parametrize(
    "ts",
    [
        "1614265330.5",
        "1614265330.0",
        "abc",
        "1614265330000",  # milliseconds
        "16142653300",  # 11 digits
        "+1614265330",
        "-1614265330",
        "1614265330\n",
        "1614265330\t",
        "1_614_265_330",
        "1614265330e0",
        "0x6037a4f2",
        "\u0661\u0666\u0661\u0664\u0662\u0666\u0665\u0663\u0663\u0660",  # Arabic-Indic digits
        "\uff11\uff16\uff11\uff14\uff12\uff16\uff15\uff13\uff13\uff10",  # fullwidth digits
        "1614265330 1614265330",
        "   ",
    ],
)
def test_invalid_timestamp_rejected(ts: str) -> None:
    assert reason_of(v1_verifier(), v1_headers(ts=ts), V1_BODY) == "invalid timestamp"


def test_timestamp_spaces_trimmed() -> None:
    assert v1_verifier().verify(v1_headers(ts=f"  {V1_TS} "), V1_BODY).timestamp == V1_TS


def test_timestamp_checked_before_signature() -> None:
    assert reason_of(v1_verifier(), v1_headers(ts="abc", sig="v1,AAAA"), V1_BODY) == (
        "invalid timestamp"
    )
    stale = str(V1_TS - 301)
    assert reason_of(v1_verifier(), v1_headers(ts=stale, sig="v1,AAAA"), V1_BODY) == (
        "timestamp too old"
    )


def test_timestamp_is_part_of_the_signed_content() -> None:
    headers = v1_headers(ts=str(V1_TS - 1))  # V1 signature, other timestamp
    assert reason_of(v1_verifier(), headers, V1_BODY) == "no matching signature"


# --------------------------------------------------------------------------- rule 3: content


@pytest.mark.parametrize(
    "body",
    [
        V1_BODY + b"\r\n",
        V1_BODY + b"\n",
        b'{"test":2432232314}',  # one space removed
        b" " + V1_BODY,
        b"",
        V1_BODY.decode().encode("utf-16"),
    ],
)
def test_altered_body_rejected(body: bytes) -> None:
    assert reason_of(v1_verifier(), v1_headers(), body) == "no matching signature"


def test_other_message_id_rejected() -> None:
    headers = v1_headers(msg_id="msg_p5jXN8AQM9LWM0D4loKWxJeK")
    assert reason_of(v1_verifier(), headers, V1_BODY) == "no matching signature"


def test_non_utf8_body_correctly_signed_verifies() -> None:
    body = b"\xff\xfe\x00not json \x80\xc3("
    headers = v1_headers(sig=sign(V1_KEY, V1_ID, V1_TS, body))
    assert v1_verifier().verify(headers, body).msg_id == V1_ID


def test_bytearray_and_memoryview_bodies() -> None:
    for body in (bytearray(V1_BODY), memoryview(V1_BODY)):
        loose: Any = body
        assert v1_verifier().verify(v1_headers(), loose)


def test_key_is_decoded_bytes_not_ascii_text() -> None:
    ascii_key = V1_SECRET.removeprefix("whsec_").encode()
    verifier = Verifier([ascii_key], clock=frozen(V1_TS))
    assert reason_of(verifier, v1_headers(), V1_BODY) == "no matching signature"


# --------------------------------------------------------------------------- rule 4: tokens


def test_valid_signature_last_accepted() -> None:
    other = sign(OTHER_KEY, V1_ID, V1_TS, V1_BODY)
    assert v1_verifier().verify(v1_headers(sig=f"{other} {V1_SIG}"), V1_BODY)
    assert v1_verifier().verify(v1_headers(sig=f"v1,AAAA   {V1_SIG}  "), V1_BODY)


@pytest.mark.parametrize("version", ["v1a", "v2", "V1", "v0", "v1 ", "", "v1\t", "\tv1"])
def test_only_exact_v1_counts(version: str) -> None:
    headers = v1_headers(sig=f"{version},{V1_MAC}")
    assert reason_of(v1_verifier(), headers, V1_BODY) == "no matching signature"


def test_other_versions_carrying_right_mac_rejected_together() -> None:
    headers = v1_headers(sig=f"v1a,{V1_MAC} v2,{V1_MAC} V1,{V1_MAC}")
    assert reason_of(v1_verifier(), headers, V1_BODY) == "no matching signature"


@pytest.mark.parametrize(
    "sig",
    [
        "v1,",
        "v1",
        V1_SIG[:-1],  # truncated
        V1_SIG[:20],
        V1_SIG + "A",
        V1_SIG.rstrip("="),  # unpadded base64 of the right MAC is not the same text
        f"v1,{V1_MAC.lower()}",
        f"v1,{base64.urlsafe_b64encode(base64.b64decode(V1_MAC)).decode()}x",
        f"v1,{V1_MAC},",
        f"v1,{V1_MAC},extra",
        f"v1,,{V1_MAC}",
        f"v1,{base64.b64decode(V1_MAC).hex()}",
        "garbage",
        ",,,",
        "v1,not-base64!!",
        "v1,é",
    ],
)
def test_bad_signature_rejected(sig: str) -> None:
    assert reason_of(v1_verifier(), v1_headers(sig=sig), V1_BODY) == "no matching signature"


@pytest.mark.parametrize(
    "junk",
    ["garbage", "v1", ",,,", "v1,not-base64!!", "v1,", "v2,abc", "v1,a,b", "v1,é", "=", "v1,😀"],
)
def test_malformed_tokens_next_to_valid_one_skipped(junk: str) -> None:
    assert v1_verifier().verify(v1_headers(sig=f"{junk} {V1_SIG}"), V1_BODY)
    assert v1_verifier().verify(v1_headers(sig=f"{V1_SIG} {junk}"), V1_BODY)
    assert reason_of(v1_verifier(), v1_headers(sig=junk), V1_BODY) == "no matching signature"


def test_huge_signature_header_rejected_quickly() -> None:
    headers = v1_headers(sig=f"{V1_SIG} " * 200_000)  # ~9.6 MB
    started = time.perf_counter()
    assert reason_of(v1_verifier(), headers, V1_BODY) == "header too long"
    assert time.perf_counter() - started < 0.1


@pytest.mark.parametrize("name", ["svix-id", "svix-timestamp"])
def test_other_huge_headers_rejected(name: str) -> None:
    headers = v1_headers()
    headers[name] = "1" * 100_000
    assert reason_of(v1_verifier(), headers, V1_BODY) == "header too long"


def test_header_length_cap_is_inclusive() -> None:
    sig = V1_SIG.ljust(100)
    assert v1_verifier(max_header_bytes=100).verify(v1_headers(sig=sig), V1_BODY)
    headers = v1_headers(sig=sig + " ")
    assert reason_of(v1_verifier(max_header_bytes=100), headers, V1_BODY) == "header too long"


def test_number_of_tokens_examined_is_capped() -> None:
    junk = ["v1,AAAA"] * (MAX_SIGNATURE_TOKENS - 1)
    assert v1_verifier().verify(v1_headers(sig=" ".join([*junk, V1_SIG])), V1_BODY)
    headers = v1_headers(sig=" ".join([*junk, "v2,x", V1_SIG]))
    assert reason_of(v1_verifier(), headers, V1_BODY) == "no matching signature"


def test_each_key_mac_computed_once_per_call() -> None:
    verifier = Verifier([OTHER_KEY, V1_KEY], clock=frozen(V1_TS))
    copies: list[int] = []

    class Counting:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def copy(self) -> Any:
            copies.append(1)
            return self.inner.copy()

    counting: Any = tuple(Counting(t) for t in verifier._templates)
    verifier._templates = counting
    sig = " ".join(["v1,AAAA"] * 10 + [V1_SIG])
    assert verifier.verify(v1_headers(sig=sig), V1_BODY)
    assert len(copies) == 2
    copies.clear()
    reason_of(verifier, v1_headers(sig="v2,x garbage"), V1_BODY)
    assert copies == []  # no v1 token: no MAC at all


# --------------------------------------------------------------------------- rotation


def test_rotation_signature_made_with_second_secret() -> None:
    new_secret = "whsec_" + base64.b64encode(b"the-new-secret-after-rotation!!!").decode()
    keys = parse_secrets(f"{V1_SECRET}, {new_secret}")
    ts = V1_TS
    headers = signed_headers(keys[1], V1_ID, V1_BODY, timestamp=ts)
    verifier = Verifier(keys, clock=frozen(ts))
    assert verifier.verify(headers, V1_BODY).msg_id == V1_ID
    assert reason_of(Verifier(keys[:1], clock=frozen(ts)), headers, V1_BODY) == (
        "no matching signature"
    )


def test_rotation_header_with_several_signatures() -> None:
    sig_old = sign(V1_KEY, V1_ID, V1_TS, V1_BODY)
    sig_new = sign(OTHER_KEY, V1_ID, V1_TS, V1_BODY)
    headers = v1_headers(sig=f"{sig_old} {sig_new}")
    for keys in ([V1_KEY], [OTHER_KEY], [OTHER_KEY, V1_KEY]):
        assert Verifier(keys, clock=frozen(V1_TS)).verify(headers, V1_BODY).msg_id == V1_ID
    stranger = Verifier([b"x" * 32], clock=frozen(V1_TS))
    assert reason_of(stranger, headers, V1_BODY) == "no matching signature"


def test_duplicate_keys_tolerated() -> None:
    assert Verifier([V1_KEY, V1_KEY], clock=frozen(V1_TS)).verify(v1_headers(), V1_BODY)


# --------------------------------------------------------------------------- Verifier arguments


@pytest.mark.parametrize("keys", [[], (), [b""], [V1_KEY, b""]])
def test_verifier_refuses_empty_keys(keys: Any) -> None:
    with pytest.raises(ValueError, match="key"):
        Verifier(keys)


@pytest.mark.parametrize("keys", [V1_KEY, "secret", ["secret"]])
def test_verifier_refuses_non_byte_keys(keys: Any) -> None:
    with pytest.raises(TypeError):
        Verifier(keys)


@pytest.mark.parametrize(
    "kwargs", [{"tolerance_seconds": -1}, {"max_header_bytes": 0}, {"max_header_bytes": -5}]
)
def test_verifier_refuses_bad_limits(kwargs: Any) -> None:
    with pytest.raises(ValueError, match="must be"):
        Verifier([V1_KEY], **kwargs)


# --------------------------------------------------------------------------- rule 6: one error


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        (None, V1_BODY),
        (v1_headers(), None),
        (v1_headers(), V1_BODY.decode()),  # text instead of bytes
        (v1_headers(), 12),
        ({1: "x", "svix-id": V1_ID}, V1_BODY),
        ({b"svix-id": b"x"}, V1_BODY),
        ({"svix-id": 5, "svix-timestamp": V1_TS, "svix-signature": V1_SIG}, V1_BODY),
        ({"svix-id": b"id", "svix-timestamp": b"1", "svix-signature": b"v1,x"}, V1_BODY),
        (v1_headers(sig=f"v1,{V1_MAC[:-1]}\udcff"), V1_BODY),
        (v1_headers(msg_id="\udcff"), V1_BODY),
        ("not a mapping", V1_BODY),
    ],
)
def test_odd_inputs_raise_only_verification_error(headers: Any, body: Any) -> None:
    reason = reason_of(v1_verifier(), headers, body)
    assert reason
    assert len(reason) < 40


def test_broken_clock_raises_verification_error() -> None:
    for value in (float("nan"), float("inf")):
        assert reason_of(v1_verifier(clock=frozen(value)), v1_headers(), V1_BODY)


_NAMES = [
    f"{family}-{part}"
    for family in ("svix", "webhook")
    for part in ("id", "timestamp", "signature")
]
_header_names = st.one_of(
    st.sampled_from(_NAMES),
    st.sampled_from(_NAMES).map(str.upper),
    st.text(max_size=20),
)
_header_values = st.one_of(
    st.text(max_size=60),
    st.just(V1_ID),
    st.just(str(V1_TS)),
    st.integers(min_value=V1_TS - 400, max_value=V1_TS + 400).map(str),
    st.just(V1_SIG),
    st.lists(
        st.one_of(
            st.just(V1_SIG),
            st.text(max_size=50),
            st.builds(lambda v, s: f"{v},{s}", st.sampled_from(["v1", "v2", "V1", ""]), st.text()),
        ),
        max_size=6,
    ).map(" ".join),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    headers=st.dictionaries(_header_names, _header_values, max_size=8),
    body=st.one_of(st.binary(max_size=200), st.just(V1_BODY), st.text(max_size=50)),
)
def test_random_input_only_raises_verification_error(
    headers: dict[str, str], body: bytes | str
) -> None:
    verifier = Verifier([V1_KEY, OTHER_KEY], clock=frozen(V1_TS), max_header_bytes=200)
    caught: VerificationError | None = None
    try:
        result = verifier.verify(headers, body)  # type: ignore[arg-type]
    except VerificationError as exc:
        caught = exc
    if caught is None:
        assert isinstance(result, VerifiedMessage)
        assert body == V1_BODY
    else:
        assert type(caught) is VerificationError
        assert caught.reason


@settings(max_examples=300, deadline=None)
@given(
    headers=st.dictionaries(
        st.one_of(st.text(max_size=10), st.binary(max_size=10), st.integers(), st.none()),
        st.one_of(st.text(), st.binary(), st.integers(), st.none(), st.floats()),
        max_size=6,
    ),
    body=st.one_of(st.binary(), st.text(), st.none(), st.integers()),
)
def test_random_untyped_input_only_raises_verification_error(headers: Any, body: Any) -> None:
    with pytest.raises(VerificationError):
        v1_verifier().verify(headers, body)


# --------------------------------------------------------------------------- headers, then body


def _outcome(call: Any) -> Any:
    """What ``call`` returned, or the type and reason of the VerificationError it raised."""
    try:
        return call()
    except VerificationError as exc:
        return ("rejected", type(exc), exc.reason)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    headers=st.dictionaries(_header_names, _header_values, max_size=8),
    body=st.one_of(st.binary(max_size=200), st.just(V1_BODY), st.text(max_size=50), st.none()),
)
def test_check_headers_then_check_signature_is_verify(headers: dict[str, str], body: Any) -> None:
    """The receiver's two steps (headers before the body, the MAC after) give exactly what
    ``verify`` gives: the same message or the same reason, and only our error."""
    verifier = Verifier([V1_KEY, OTHER_KEY], clock=frozen(V1_TS), max_header_bytes=200)
    whole = _outcome(lambda: verifier.verify(headers, body))
    first = _outcome(lambda: verifier.check_headers(headers))
    if isinstance(first, SignedHeaders):
        assert _outcome(lambda: verifier.check_signature(first, body)) == whole
    else:
        assert first == whole


@settings(max_examples=200, deadline=None)
@given(
    headers=st.dictionaries(
        st.one_of(st.text(max_size=10), st.binary(max_size=10), st.integers(), st.none()),
        st.one_of(st.text(), st.binary(), st.integers(), st.none(), st.floats()),
        max_size=6,
    )
)
def test_check_headers_on_untyped_input_only_raises_verification_error(headers: Any) -> None:
    with pytest.raises(VerificationError):
        v1_verifier().check_headers(headers)


def test_headers_are_judged_without_the_body() -> None:
    """Everything but the MAC is decided from the headers alone, in the rules' order."""
    verifier = v1_verifier()
    assert verifier.check_headers(v1_headers()) == SignedHeaders(V1_ID, V1_TS, V1_SIG)
    cases = [
        ({}, "missing headers"),
        (v1_headers(msg_id="a\x00b"), "invalid message id"),
        (v1_headers(ts="abc"), "invalid timestamp"),
        (v1_headers(ts=str(V1_TS - 301)), "timestamp too old"),
        (v1_headers(ts=str(V1_TS + 301)), "timestamp too new"),
        (v1_headers(sig="v1," + "A" * 9000), "header too long"),
    ]
    for headers, reason in cases:
        with pytest.raises(VerificationError) as info:
            verifier.check_headers(headers)
        assert info.value.reason == reason
    signed = verifier.check_headers(v1_headers(sig="v1,AAAA"))
    with pytest.raises(VerificationError, match="no matching signature"):
        verifier.check_signature(signed, V1_BODY)


# --------------------------------------------------------------------------- rule 2: secrets


def _assert_secret_not_in_message(raw: str, message: str) -> None:
    payload = raw.strip().removeprefix("whsec_")
    if payload:
        assert payload not in message
        assert raw not in message


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "whsec_",
        "  whsec_  ",
        "whsec_!!!!",
        "whsec_MfKQ9r8GKYqrTwjUPD8I$PZIo2LaLaSw",  # non-base64 character
        "whsec_MfKQ9r8G-YqrTwjUPD8I_PZIo2LaLaSw",  # url-safe alphabet
        "whsec_MfKQ9r8GKYqrTwjU PD8ILPZIo2LaLaSw",  # inner space
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw=",  # excess padding
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw==",
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS==",  # wrong padding
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLa=",
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZ=Io2LaLaSw",  # padding inside
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwA",  # length 4n+1: cannot be base64
        "whsec_===",
        "whsec_whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",  # prefix twice
        "whsec_AAAA",  # 3 bytes: absurd
        "whsec_" + base64.b64encode(b"x" * (MIN_SECRET_BYTES - 1)).decode(),
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwé",
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\x00",
    ],
)
def test_decode_secret_refuses(raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        decode_secret(raw)
    message = str(info.value)
    assert "DIMMY_WEBHOOK_SECRET" in message
    _assert_secret_not_in_message(raw, message)


def test_decode_secret_accepts_whitespace_prefix_and_missing_padding() -> None:
    key = b"twenty-byte-secret!!"
    encoded = base64.b64encode(key).decode()
    assert encoded.endswith("=")
    for raw in (
        f"whsec_{encoded}",
        encoded,
        f"  whsec_{encoded}\n",
        f"\twhsec_{encoded.rstrip('=')} ",
        encoded.rstrip("="),
    ):
        assert decode_secret(raw) == key
    assert decode_secret(f" {V1_SECRET}\n") == V1_KEY
    assert len(V1_KEY) == 24
    sixteen = base64.b64encode(b"k" * MIN_SECRET_BYTES).decode()
    assert sixteen.endswith("==")
    assert decode_secret(f"whsec_{sixteen}") == decode_secret(sixteen.rstrip("=")) == b"k" * 16


@pytest.mark.parametrize(
    "raw",
    [
        f"{V1_SECRET},{V2_SECRET}",
        f"{V1_SECRET} {V2_SECRET}",
        f"  {V1_SECRET} ,  {V2_SECRET} , ",
        f",{V1_SECRET},,{V2_SECRET}",
        f"{V1_SECRET}\n{V2_SECRET}",
    ],
)
def test_parse_secrets_separators(raw: str) -> None:
    assert parse_secrets(raw) == (V1_KEY, decode_secret(V2_SECRET))


def test_parse_secrets_single() -> None:
    assert parse_secrets(V1_SECRET) == (V1_KEY,)


@pytest.mark.parametrize("raw", ["", "   ", ",", " , ,, "])
def test_parse_secrets_needs_one(raw: str) -> None:
    with pytest.raises(ConfigError, match="empty"):
        parse_secrets(raw)


@pytest.mark.parametrize(
    ("raw", "position"),
    [
        (f"{V1_SECRET}, whsec_!!!!", "#2"),
        (f"whsec_AAAA {V1_SECRET}", "#1"),
        (f"{V1_SECRET} {V2_SECRET},whsec_abc$def", "#3"),
        (f"{V1_SECRET},whsec_", "#2"),
    ],
)
def test_parse_secrets_names_bad_position(raw: str, position: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_secrets(raw)
    message = str(info.value)
    assert f"secret {position}" in message
    for secret in raw.replace(",", " ").split():
        _assert_secret_not_in_message(secret, message)


# --------------------------------------------------------------------------- sign / signed_headers


def test_signed_headers_families() -> None:
    assert signed_headers(V1_KEY, V1_ID, V1_BODY, timestamp=V1_TS) == v1_headers()
    assert signed_headers(V1_KEY, V1_ID, V1_BODY, timestamp=V1_TS, family="webhook") == (
        v1_headers(family="webhook")
    )
    with pytest.raises(ValueError, match="family"):
        signed_headers(V1_KEY, V1_ID, V1_BODY, family="Svix")


def test_signed_headers_default_timestamp_is_now() -> None:
    before = int(time.time())
    headers = signed_headers(V1_KEY, V1_ID, V1_BODY)
    assert before <= int(headers["svix-timestamp"]) <= int(time.time())
    assert Verifier([V1_KEY]).verify(headers, V1_BODY).msg_id == V1_ID


# --------------------------------------------------------------------------- svix cross-check


@pytest.mark.parametrize(
    ("secret", "msg_id", "ts", "body", "expected"),
    [
        (V1_SECRET, V1_ID, V1_TS, V1_BODY, V1_SIG),
        (V2_SECRET, V2_ID, V2_TS, V2_BODY, V2_SIG),
    ],
)
def test_svix_agrees_on_reference_vectors(
    secret: str, msg_id: str, ts: int, body: bytes, expected: str
) -> None:
    when = datetime.fromtimestamp(ts, tz=UTC)
    assert Webhook(secret).sign(msg_id, when, body.decode()) == expected
    assert sign(decode_secret(secret), msg_id, ts, body) == expected


@pytest.mark.parametrize("secret", [V1_SECRET, V2_SECRET])
@pytest.mark.parametrize(
    "body", [V1_BODY, b'{"name": "caf\xc3\xa9 \xe2\x82\xac", "n": [1, 2.5, null]}', b""]
)
def test_svix_signed_verifies_with_ours(secret: str, body: bytes) -> None:
    ts = int(time.time())
    sig = Webhook(secret).sign("msg_svix", datetime.fromtimestamp(ts, tz=UTC), body.decode())
    headers = {"svix-id": "msg_svix", "svix-timestamp": str(ts), "svix-signature": sig}
    verifier = Verifier(parse_secrets(secret))
    assert verifier.verify(headers, body) == VerifiedMessage("msg_svix", ts)


@pytest.mark.parametrize("secret", [V1_SECRET, V2_SECRET])
@pytest.mark.parametrize("family", ["svix", "webhook"])
def test_ours_verifies_with_svix(secret: str, family: str) -> None:
    body = b'{"event_type":"item.created","data":{"id":"caf\xc3\xa9"}}'
    headers = signed_headers(decode_secret(secret), "msg_ours", body, family=family)
    Webhook(secret).verify(body, headers)  # raises on failure
    tampered = {**headers, f"{family}-id": "msg_other"}
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, tampered)
