"""JWKS parsing, algorithm binding, find() and static key sources (no network)."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from fixtures.jwks_server import (
    Signer,
    jwks_json,
    make_ec_key,
    make_ed25519_key,
    make_hmac_key,
    make_rsa_key,
    mint,
)

from legation.authz.jwks import (
    JwksError,
    Key,
    KeySet,
    StaticKeySource,
    parse_jwks,
)
from legation.authz.jwks_remote import RemoteJwks, RemoteSettings

RSA = make_rsa_key("rsa")
EC = make_ec_key("ec")
EC384 = make_ec_key("ec384", alg="ES384")
ED = make_ed25519_key("ed")
HS = make_hmac_key("hs")
ALL_ASYM = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"]


def doc(*jwks: dict[str, Any]) -> str:
    return json.dumps({"keys": list(jwks)})


def parse(data: str | bytes, algorithms: list[str] | None = None, **kw: Any) -> KeySet:
    return parse_jwks(data, algorithms=algorithms or ALL_ASYM, source="team/p/corp", **kw)


def skipped(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("JWKS key skipped")]


# --- parsing each key type ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("signer", "algorithms", "alg", "key_type"),
    [
        (RSA, ["ES256", "RS256"], "RS256", rsa.RSAPublicKey),
        (RSA, ["PS384", "RS256"], "PS384", rsa.RSAPublicKey),
        (EC, ["RS256", "ES384", "ES256"], "ES256", ec.EllipticCurvePublicKey),
        (EC384, ["ES256", "ES384"], "ES384", ec.EllipticCurvePublicKey),
        (ED, ["RS256", "EdDSA"], "EdDSA", ed25519.Ed25519PublicKey),
        (HS, ["HS512", "HS256"], "HS256", bytes),  # 32 bytes: too short for HS512
    ],
    ids=["rsa", "rsa-ps", "ec256", "ec384", "ed25519", "oct"],
)
def test_key_without_alg_binds_first_fitting_algorithm(
    signer: Signer, algorithms: list[str], alg: str, key_type: type
) -> None:
    keys = parse(jwks_json([signer], with_alg=False), algorithms)
    [key] = keys.keys
    assert (key.kid, key.alg) == (signer.kid, alg)
    assert isinstance(key.key, key_type)


@pytest.mark.parametrize("signer", [RSA, EC, EC384, ED, HS], ids=lambda s: s.alg)
def test_minted_token_verifies_with_the_found_key(signer: Signer) -> None:
    keys = parse(jwks_json([signer]), [signer.alg])
    [key] = keys.find(signer.kid, signer.alg)
    claims = jwt.decode(mint(signer, {"sub": "u"}), key.key, algorithms=[key.alg])
    assert claims["sub"] == "u"


def test_declared_alg_wins_over_the_first_fitting_one() -> None:
    jwk = RSA.jwk() | {"alg": "RS512"}
    [key] = parse(doc(jwk), ["RS256", "RS512"]).keys
    assert key.alg == "RS512"


def test_single_jwk_document() -> None:
    [key] = parse(json.dumps(EC.jwk())).keys
    assert (key.kid, key.alg) == ("ec", "ES256")


def test_bytes_input() -> None:
    assert parse(jwks_json([ED]).encode()).keys[0].alg == "EdDSA"


# --- skipping ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("jwk", "reason"),
    [
        (RSA.jwk() | {"alg": "HS512"}, "not among the allowed"),
        (RSA.jwk() | {"alg": "HS256"}, "does not fit"),  # RSA key can never be an HMAC secret
        (RSA.jwk() | {"alg": "ES256"}, "does not fit"),
        (EC.jwk() | {"alg": "ES384"}, "does not fit"),  # P-256 key cannot do ES384
        (RSA.jwk() | {"alg": "none"}, "not among the allowed"),
        (RSA.jwk() | {"alg": ["RS256"]}, "not among the allowed"),
        (RSA.jwk() | {"use": "enc"}, "use is 'enc'"),
        (RSA.jwk() | {"key_ops": ["encrypt"]}, "key_ops"),
        (RSA.jwk() | {"kid": 7}, "kid is not a string"),
        ({"kty": "RSA", "n": "AQAB"}, "'e' is missing"),
        (RSA.jwk() | {"n": "not*base64"}, "'n' is missing or not base64url"),
        ({"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"}, "unsupported EC curve"),
        ({"kty": "OKP", "crv": "Ed448", "x": "AA"}, "unsupported OKP curve"),
        ({"kty": "OKP", "crv": "X25519", "x": "A" * 43}, "unsupported OKP curve"),
        ({"kty": "EC", "crv": "P-256", "x": EC.public_jwk["x"], "y": EC.public_jwk["x"]}, "not on the curve"),
        ({"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA"}, "wrong length"),
        ({"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}, "wrong length"),
        ({"kty": "DSA"}, "unsupported kty"),
        ({"n": "AQAB"}, "unsupported kty"),
        ("just a string", "not a JSON object"),
        ({"kty": "oct", "k": ""}, "'k' is missing"),
    ],
)
def test_unusable_keys_are_skipped_with_a_reason(
    jwk: Any, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    keys = parse(doc(jwk, ED.jwk()), [*ALL_ASYM, "HS256"])
    assert [k.kid for k in keys.keys] == ["ed"]
    [message] = skipped(caplog)
    assert reason in message


def test_weak_rsa_key_is_skipped(caplog: pytest.LogCaptureFixture) -> None:
    weak = make_rsa_key("weak", bits=1024)
    keys = parse(doc(weak.jwk(), ED.jwk()))
    assert [k.kid for k in keys.keys] == ["ed"]
    assert "1024 bits" in skipped(caplog)[0]


def test_short_hmac_secret_fits_no_algorithm(caplog: pytest.LogCaptureFixture) -> None:
    short = make_hmac_key("short", secret=b"0123456789abcdef")
    with pytest.raises(JwksError, match="no usable keys"):
        parse(jwks_json([short], with_alg=False), ["HS256"])
    assert "no allowed algorithm fits" in skipped(caplog)[0]


def test_remote_documents_never_supply_hmac_secrets(caplog: pytest.LogCaptureFixture) -> None:
    keys = parse(jwks_json([HS, RSA]), ["HS256", "RS256"], remote=True)
    assert [k.kid for k in keys.keys] == ["rsa"]
    assert "oct" in skipped(caplog)[0]
    assert parse(jwks_json([HS]), ["HS256"]).keys[0].key == HS.private_key  # static: allowed


def private_jwk(signer: Signer) -> dict[str, Any]:
    to_jwk = {"rsa": jwt.algorithms.RSAAlgorithm, "ec": jwt.algorithms.ECAlgorithm}[signer.kid or ""]
    jwk = dict(to_jwk.to_jwk(signer.private_key, as_dict=True), kid=signer.kid)
    jwk.pop("key_ops", None)  # PyJWT writes ["sign"]; a pasted private JWK often has none
    return jwk


@pytest.mark.parametrize("signer", [RSA, EC], ids=["rsa", "ec"])
def test_static_private_jwk_keeps_only_the_public_key(signer: Signer) -> None:
    jwk = private_jwk(signer)
    assert "d" in jwk
    [key] = parse(doc(jwk)).keys
    assert not hasattr(key.key, "private_bytes")
    assert key.key.public_numbers() == signer.private_key.public_key().public_numbers()
    assert jwk["d"] not in repr(key)


def test_remote_private_jwk_is_skipped(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(JwksError, match="no usable keys"):
        parse(doc(private_jwk(RSA)), remote=True)
    assert "private key material" in skipped(caplog)[0]


def test_messages_never_carry_key_material(caplog: pytest.LogCaptureFixture) -> None:
    bad = [
        RSA.jwk() | {"alg": "HS256"},
        private_jwk(RSA) | {"kid": "p", "use": "enc"},
        {"kty": "EC", "crv": "P-256", "x": EC.public_jwk["x"], "y": EC.public_jwk["x"]},
    ]
    with pytest.raises(JwksError) as err:
        parse(doc(*bad), remote=True)
    text = str(err.value) + " ".join(r.getMessage() + str(r.__dict__) for r in caplog.records)
    for secret in (RSA.public_jwk["n"], private_jwk(RSA)["d"], EC.public_jwk["x"]):
        assert secret not in text and secret[:20] not in text


# --- whole-document errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("", "not valid JSON"),
        ("{not json", "not valid JSON"),
        (b"\xff\xfe\x00garbage", "not valid JSON"),
        ("[" * 100_000, "not valid JSON"),
        ("[]", "not a JWKS"),
        ('{"keys": "x"}', "not a JWKS"),
        ('{"foo": 1}', "not a JWKS"),
        ('{"keys": []}', "no usable keys"),
        (json.dumps({"keys": [{"kty": "DSA"}] * 300}), "at most 256"),
    ],
)
def test_garbage_documents(data: str | bytes, message: str) -> None:
    with pytest.raises(JwksError, match=message) as err:
        parse(data)
    assert str(err.value).startswith("team/p/corp: ")


def test_duplicate_kids_are_an_error() -> None:
    with pytest.raises(JwksError, match="duplicate kid 'rsa'"):
        parse(doc(RSA.jwk(), RSA.jwk() | {"alg": "PS256"}))


def test_keys_without_kid_may_repeat() -> None:
    keys = parse(doc(RSA.jwk() | {"kid": None}, make_rsa_key(None).jwk()))
    assert [k.kid for k in keys.keys] == [None, None]


# --- find ------------------------------------------------------------------------------------


def test_find_binds_kid_to_its_algorithm() -> None:
    ec2 = make_ec_key("ec2")
    keys = parse(doc(RSA.jwk(), EC.jwk(), ec2.jwk(), ED.jwk()))
    assert keys.find("rsa", "RS256") == [keys.keys[0]]
    assert keys.find("rsa", "PS256") == []  # same key, other algorithm: never
    assert keys.find("rsa", "HS256") == []
    assert keys.find("nope", "RS256") == []
    assert [k.kid for k in keys.find(None, "ES256")] == ["ec", "ec2"]
    assert keys.find(None, "ES384") == []
    assert keys.has_kid("ed") and not keys.has_kid("nope")


def test_find_returns_a_fresh_list() -> None:
    keys = parse(doc(EC.jwk()))
    keys.find(None, "ES256").clear()
    assert len(keys.find(None, "ES256")) == 1


def b64(raw: bytes) -> bytes:
    return jwt.utils.base64url_encode(raw)


def test_hs256_token_signed_with_the_rsa_public_key_finds_no_key() -> None:
    pem = RSA.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = b64(b'{"alg":"HS256","kid":"rsa"}') + b"." + b64(b'{"sub":"x"}')
    forged = signing_input + b"." + b64(hmac.new(pem, signing_input, hashlib.sha256).digest())
    header = jwt.get_unverified_header(forged)
    keys = parse(jwks_json([RSA]), ["RS256", "HS256"])
    assert keys.find(header["kid"], header["alg"]) == []


def test_key_is_frozen() -> None:
    key = Key(kid="a", alg="RS256", key=b"")
    with pytest.raises(AttributeError):
        key.alg = "HS256"  # type: ignore[misc]


# --- static sources ----------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_static_inline() -> None:
    src = StaticKeySource(data=jwks_json([RSA, EC]), algorithms=["RS256", "ES256"], source="s")
    await src.start()
    keys = await src.current()
    assert {k.kid for k in keys.keys} == {"rsa", "ec"}
    assert await src.refresh_for_kid("other") is keys
    await src.close()


def test_static_needs_exactly_one_of_data_and_path(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        StaticKeySource(algorithms=["RS256"], source="s")
    with pytest.raises(ValueError, match="exactly one"):
        StaticKeySource(data="{}", path=str(tmp_path / "x"), algorithms=["RS256"], source="s")


def test_static_bad_material_fails_at_construction(tmp_path: Path) -> None:
    with pytest.raises(JwksError, match="not valid JSON"):
        StaticKeySource(data="nope", algorithms=["RS256"], source="s")
    with pytest.raises(JwksError, match="cannot read JWKS file"):
        StaticKeySource(path=str(tmp_path / "missing.json"), algorithms=["RS256"], source="s")


def write(path: Path, text: str, mtime: float) -> None:
    path.write_text(text)
    os.utime(path, (mtime, mtime))


async def test_static_file_change_is_picked_up(tmp_path: Path) -> None:
    path, clock = tmp_path / "jwks.json", FakeClock()
    write(path, jwks_json([RSA]), 1_000_000)
    src = StaticKeySource(path=str(path), algorithms=["RS256", "ES256"], source="s", clock=clock)
    first = await src.current()
    assert [k.kid for k in first.keys] == ["rsa"]

    write(path, jwks_json([EC]), 1_000_010)
    clock.now += 0.5
    assert await src.current() is first  # checked at most once a second
    clock.now += 0.6
    second = await src.current()
    assert [k.kid for k in second.keys] == ["ec"]
    assert second.version != first.version
    assert second.fetched_at == clock.now


async def test_static_file_same_keys_keep_their_version(tmp_path: Path) -> None:
    path, clock = tmp_path / "jwks.json", FakeClock()
    write(path, jwks_json([RSA]), 1_000_000)
    src = StaticKeySource(path=str(path), algorithms=["RS256"], source="s", clock=clock)
    first = await src.current()
    write(path, jwks_json([RSA]) + "\n", 1_000_010)  # rewritten, same keys
    clock.now += 2
    assert (await src.current()).version == first.version


async def test_static_file_broken_or_gone_keeps_previous_keys(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, clock = tmp_path / "jwks.json", FakeClock()
    write(path, jwks_json([RSA]), 1_000_000)
    src = StaticKeySource(path=str(path), algorithms=["RS256"], source="s", clock=clock)
    first = await src.current()
    write(path, '{"keys": [', 1_000_010)
    clock.now += 2
    assert await src.current() is first
    path.unlink()
    clock.now += 2
    assert await src.current() is first
    assert sum("reload failed" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR) == 2
    write(path, jwks_json([RSA, make_rsa_key("new")]), 1_000_020)
    clock.now += 2
    assert (await src.current()).has_kid("new")


# --- remote settings and URI checks (no fetch happens here) ----------------------------------


@pytest.mark.parametrize(
    "uri",
    [
        "https://127.0.0.1/jwks",
        "https://10.1.2.3/jwks",
        "https://172.16.0.1/jwks",
        "https://192.168.1.1/jwks",
        "https://169.254.169.254/latest",
        "https://100.64.0.1/jwks",
        "https://0.0.0.0/jwks",
        "https://224.0.0.1/jwks",
        "https://240.0.0.1/jwks",
        "https://[::1]/jwks",
        "https://[::]/jwks",
        "https://[fe80::1]/jwks",
        "https://[fc00::1]/jwks",
        "https://[ff02::1]/jwks",
        "https://[::ffff:127.0.0.1]/jwks",
        "https://[::ffff:10.0.0.1]/jwks",
        "https://[2002:7f00:1::]/jwks",
        "https://[64:ff9b::a00:1]/jwks",
    ],
)
def test_non_public_ip_literals_are_refused(uri: str) -> None:
    with pytest.raises(JwksError, match="not a public address"):
        RemoteJwks(RemoteSettings(uri=uri), algorithms=["RS256"], source="s")
    RemoteJwks(RemoteSettings(uri=uri, allow_insecure=True), algorithms=["RS256"], source="s")


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("http://idp.example.com/jwks", "must use https"),
        ("ftp://idp.example.com/jwks", "absolute https URL"),
        ("/jwks.json", "absolute https URL"),
        ("not a url", "absolute https URL"),
    ],
)
def test_bad_uris_are_refused(uri: str, message: str) -> None:
    with pytest.raises(JwksError, match=message):
        RemoteJwks(RemoteSettings(uri=uri), algorithms=["RS256"], source="s")


@pytest.mark.parametrize(
    "uri", ["https://idp.example.com/jwks", "https://93.184.216.34/jwks", "https://[2606:4700::1111]/k"]
)
def test_public_https_uris_are_accepted(uri: str) -> None:
    RemoteJwks(RemoteSettings(uri=uri), algorithms=["RS256"], source="s")


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        RemoteSettings(uri="https://x", timeout=0)
    with pytest.raises(ValueError):
        RemoteSettings(uri="https://x", refetch_cooldown=-1)
