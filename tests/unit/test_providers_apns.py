"""APNs adapter: Apple's documented request shape, the ES256 provider token, the reason table."""
from __future__ import annotations

import base64
import uuid

import orjson
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from herald.models import Contacts
from herald.providers import OK, PERMANENT, RETRYABLE, THROTTLED, ApnsAdapter, apns_id_for
from herald.providers.apns import APNS_REASONS, ProviderTokenSigner
from herald.providers.exceptions import ProviderConfigError
from herald.settings import Settings
from tests.helpers_mocks import NOW_MS, make_notification

KEY = ec.generate_private_key(ec.SECP256R1())
PEM = KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                        serialization.NoEncryption()).decode()
SETTINGS = Settings(apns_url="https://api.sandbox.push.apple.com", apns_topic="com.example.MyApp",
                    apns_key_id="8YL3G3RRX7", apns_team_id="C86NV9JX3D", apns_private_key=PEM)
DEVICE = "00fc13adff785122b4ad28809a3420982341241421348097878e577c991de8f0"

# Apple, "Sending notification requests to APNs": the example request's headers and payload.
DOC_EXAMPLE = {
    ":path": f"/3/device/{DEVICE}",
    "apns-push-type": "alert", "apns-priority": "10", "apns-topic": "com.example.MyApp",
    "payload": {"aps": {"alert": {"title": "Hello", "body": "Hello"}}},
}


def b64json(part: str) -> dict:
    return orjson.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def verify_jwt(token: str, public_key) -> tuple[dict, dict]:
    header, claims, sig = token.split(".")
    raw = base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))
    assert len(raw) == 64  # JOSE ES256: r || s, 32 bytes each, not DER
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    public_key.verify(der, f"{header}.{claims}".encode(), ec.ECDSA(hashes.SHA256()))
    return b64json(header), b64json(claims)


def test_request_matches_the_documented_example():
    apns = ApnsAdapter()
    n = make_notification(id="ntf-doc", content={"title": "Hello", "body": "Hello"})
    req = apns.build_request(n, Contacts(push_token=DEVICE, platform="ios"), SETTINGS,
                             now_ms=NOW_MS)
    assert req.method == "POST" and req.http2
    assert req.url == "https://api.sandbox.push.apple.com" + DOC_EXAMPLE[":path"]
    for name in ("apns-push-type", "apns-priority", "apns-topic"):
        assert req.headers[name] == DOC_EXAMPLE[name]
    assert req.headers["apns-id"] == apns_id_for(n.tenant_id, "ntf-doc")
    assert req.headers["apns-expiration"] == str((NOW_MS + 30_000) // 1000)
    payload = orjson.loads(req.body)
    assert payload["aps"] == DOC_EXAMPLE["payload"]["aps"]
    assert payload["herald_id"] == "ntf-doc"
    assert all(name == name.lower() for name in req.headers)  # HTTP/2 wants lower case


def test_provider_token_is_a_verifiable_es256_jwt():
    apns = ApnsAdapter()
    n = make_notification()
    req = apns.build_request(n, n.to, SETTINGS, now_ms=NOW_MS)
    scheme, token = req.headers["authorization"].split(" ")
    assert scheme == "bearer"
    header, claims = verify_jwt(token, KEY.public_key())
    assert header == {"alg": "ES256", "kid": "8YL3G3RRX7"}
    assert claims == {"iss": "C86NV9JX3D", "iat": NOW_MS // 1000}


def test_provider_token_is_reused_for_50_minutes_then_resigned():
    signer = ProviderTokenSigner()
    t0 = signer.token(SETTINGS, 1000.0)
    assert signer.token(SETTINGS, 1000.0 + 49 * 60) == t0
    t1 = signer.token(SETTINGS, 1000.0 + 50 * 60)
    assert t1 != t0
    assert signer.token(SETTINGS.replace(apns_key_id="OTHERKEY01"), 1000.0 + 50 * 60) != t1


def test_expired_provider_token_answer_drops_the_cached_token():
    apns = ApnsAdapter()
    first = apns.signer.token(SETTINGS, 1000.0)
    out = apns.classify(403, {}, b'{"reason": "ExpiredProviderToken"}')
    assert out.kind is RETRYABLE
    assert apns.signer.token(SETTINGS, 1001.0) != first


def test_key_may_be_an_escaped_env_string_or_a_p8_path(tmp_path):
    p8 = tmp_path / "AuthKey_8YL3G3RRX7.p8"
    p8.write_text(PEM)
    for material in (PEM.replace("\n", "\\n"), str(p8)):
        token = ProviderTokenSigner().token(SETTINGS.replace(apns_private_key=material), 5.0)
        verify_jwt(token, KEY.public_key())


def test_bad_or_missing_keys_fail_loudly():
    n = make_notification()
    for material in ("", "not a key", "/nonexistent/AuthKey.p8"):
        with pytest.raises(ProviderConfigError):
            ApnsAdapter().build_request(n, n.to, SETTINGS.replace(apns_private_key=material))
    rsa_like = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode()
    with pytest.raises(ProviderConfigError):
        ApnsAdapter().build_request(n, n.to, SETTINGS.replace(apns_private_key=rsa_like))
    # against the local mock a throwaway key is fine
    local = Settings(apns_url="http://127.0.0.1:18102")
    assert ApnsAdapter().build_request(n, n.to, local).headers["authorization"]


def test_apns_id_is_a_stable_uuid5_of_the_tenant_and_herald_id():
    assert apns_id_for("acme", "ntf-1") == apns_id_for("acme", "ntf-1")
    assert apns_id_for("acme", "ntf-1") != apns_id_for("acme", "ntf-2")
    assert apns_id_for("acme", "ntf-1") != apns_id_for("globex", "ntf-1")  # ids are per tenant
    assert uuid.UUID(apns_id_for("acme", "ntf-1")).version == 5
    # pinned: a changed namespace would break the mapping of every apns-id ever sent
    assert apns_id_for("acme", "ntf-1") == "b54a084a-979d-5bf7-93ce-889f0031567e"


def test_promotional_priority_expiration_and_custom_data():
    apns = ApnsAdapter()
    n = make_notification(priority="promotional", expires_at=NOW_MS + 3_600_999,
                          content={"body": "Sale", "data": {"campaign": "spring", "aps": "x"}})
    req = apns.build_request(n, n.to, SETTINGS, now_ms=NOW_MS)
    assert req.headers["apns-priority"] == "5"
    assert req.headers["apns-expiration"] == str((NOW_MS + 3_600_999) // 1000)  # floored
    payload = orjson.loads(req.body)
    assert payload == {"campaign": "spring", "aps": {"alert": {"body": "Sale"}},
                       "herald_id": n.id}


def test_device_token_is_escaped_in_the_path():
    n = make_notification()
    req = ApnsAdapter().build_request(n, Contacts(push_token="a/b c"), SETTINGS)
    assert req.url.endswith("/3/device/a%2Fb%20c")


# ------------------------------------------------------------------ classification

def test_success_carries_the_apns_id():
    out = ApnsAdapter().classify(200, {"apns-id": "eabeae54-14a8-11e5-b60b-1697f925ec7b"}, b"")
    assert out.kind is OK
    assert out.message_id == "eabeae54-14a8-11e5-b60b-1697f925ec7b"


RECORDED = [
    (400, b'{ "reason" : "BadDeviceToken" }', PERMANENT, True),
    (400, b'{"reason": "DeviceTokenNotForTopic"}', PERMANENT, True),
    (410, b'{"reason": "Unregistered", "timestamp": 1454402113000}', PERMANENT, True),
    (410, b'{"reason": "ExpiredToken"}', PERMANENT, True),
    (400, b'{"reason": "BadExpirationDate"}', PERMANENT, False),
    (403, b'{"reason": "InvalidProviderToken"}', PERMANENT, False),
    (413, b'{"reason": "PayloadTooLarge"}', PERMANENT, False),
    (429, b'{"reason": "TooManyRequests"}', THROTTLED, False),
    (429, b'{"reason": "TooManyProviderTokenUpdates"}', THROTTLED, False),
    (500, b'{"reason": "InternalServerError"}', RETRYABLE, False),
    (503, b'{"reason": "ServiceUnavailable"}', RETRYABLE, False),
    (503, b'{"reason": "Shutdown"}', RETRYABLE, False),
    (400, b'{"reason": "IdleTimeout"}', RETRYABLE, False),
    (502, b"", RETRYABLE, False),
    (400, b'{"reason": "SomethingNew"}', PERMANENT, False),
]


@pytest.mark.parametrize("status,body,kind,token_invalid", RECORDED)
def test_recorded_answers(status, body, kind, token_invalid):
    out = ApnsAdapter().classify(status, {"apns-id": "x"}, body)
    assert (out.kind, out.token_invalid, out.status) == (kind, token_invalid, status)


def test_unregistered_keeps_apples_timestamp_and_throttle_has_a_wait():
    out = ApnsAdapter().classify(410, {}, b'{"reason":"Unregistered","timestamp":1454402113000}')
    assert out.code == "Unregistered" and "1454402113000" in out.detail
    out = ApnsAdapter().classify(429, {"retry-after": "2"}, b'{"reason":"TooManyRequests"}')
    assert out.retry_after_s == 2.0


@pytest.mark.parametrize("reason", sorted(APNS_REASONS))
def test_every_table_row_is_reachable(reason):
    out = ApnsAdapter().classify(400, {}, orjson.dumps({"reason": reason}))
    assert (out.kind, out.token_invalid, out.code) == \
        (APNS_REASONS[reason].kind, APNS_REASONS[reason].token_invalid, reason)
