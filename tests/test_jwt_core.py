"""The sans-IO JWT core: real keys, real signatures, and every known way to forge an access token."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import warnings

import pytest
from joserfc import jws
from joserfc.jwk import ECKey, OKPKey, RSAKey

from falcon_oauth import core, jwt
from falcon_oauth.jwt import JwtPolicy, KeyRefresh, KeySet, UnknownKey

pytestmark = pytest.mark.unit

NOW = 1_800_000_000.0
ISSUER = "https://as.example.test"
AUDIENCE = "https://api.example.test"

# Generated once per module: RSA generation is the slow part.
RSA = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
RSA_2 = RSAKey.generate_key(2048, parameters={"kid": "rsa-2"})
ATTACKER = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})  # same kid, other key
EC = ECKey.generate_key("P-256", parameters={"kid": "ec-1"})
ED = OKPKey.generate_key("Ed25519", parameters={"kid": "ed-1"})
PRIVATE = {"rsa-1": RSA, "rsa-2": RSA_2, "ec-1": EC, "ed-1": ED}


def public(*keys) -> list[dict]:
    return [k.as_dict(private=False) for k in keys]


def jwks(*keys) -> bytes:
    return json.dumps({"keys": public(*keys)}).encode()


KEYS = KeySet.from_jwks(jwks(RSA, EC, ED))
POLICY = JwtPolicy(jwt.DEFAULT_ALGORITHMS, True, (ISSUER,), (AUDIENCE,), 30.0)


def b64(data: bytes | dict) -> str:
    if isinstance(data, dict):
        data = json.dumps(data).encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**changes) -> dict:
    base = {"iss": ISSUER, "aud": AUDIENCE, "sub": "user-42", "client_id": "app", "iat": NOW - 10,
            "exp": NOW + 300, "jti": "j-1", "scope": "read write"}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not DROP}


DROP = object()


def sign(payload: dict | None = None, alg: str = "RS256", key=RSA, **header) -> str:
    header = {"alg": alg, "typ": "at+jwt", "kid": key.kid, **header}
    header = {k: v for k, v in header.items() if v is not DROP}
    with warnings.catch_warnings():  # joserfc warns that "EdDSA" is superseded (RFC 9864)
        warnings.simplefilter("ignore")
        registry = jws.JWSRegistry(algorithms=[alg], strict_check_header=False)  # lets any header through
        return jws.serialize_compact(header, json.dumps(payload or claims()), key, registry=registry)


def forge(header: dict, payload: dict, signature: bytes = b"") -> str:
    return f"{b64(header)}.{b64(payload)}.{b64(signature)}"


def check(token: str, policy: JwtPolicy = POLICY, keys: KeySet = KEYS, now: float = NOW) -> core.Introspected:
    return jwt.verify(token, keys, policy, now)


def reason(token: str, **kwargs) -> str | None:
    record = check(token, **kwargs)
    assert record.active is (record.reason is None)
    if not record.active:
        assert record.claims == {}
    return record.reason


# -- valid tokens ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("alg, kid", [("RS256", "rsa-1"), ("PS256", "rsa-1"), ("ES256", "ec-1"),
                                      ("EdDSA", "ed-1")])
def test_a_valid_token_of_each_default_algorithm_is_active_with_its_payload_as_claims(alg, kid):
    record = check(sign(alg=alg, key=PRIVATE[kid]))
    assert record == core.Introspected(True, claims())


def test_the_claims_work_with_decide_and_policy_as_introspection_claims_do():
    record = check(sign())
    verdict = core.decide(record, NOW, 30, core.Policy(required_scopes=("read",), issuers=(ISSUER,)))
    assert (verdict.authenticated, verdict.user_id) == (True, "user-42")
    verdict = core.decide(record, NOW, 30, core.Policy(required_scopes=("admin",)))
    assert (verdict.reason, verdict.detail) == (core.INSUFFICIENT_SCOPE, {"missing_scopes": ["admin"]})
    assert core.Introspected.from_json(json.loads(json.dumps(record.to_json()))) == record


def test_aud_may_be_a_list_containing_the_audience():
    assert check(sign(claims(aud=["other", AUDIENCE]))).active


@pytest.mark.parametrize("typ", ["at+jwt", "AT+JWT", "application/at+jwt", "Application/AT+JWT"])
def test_typ_is_compared_without_case(typ):
    assert check(sign(typ=typ)).active


def test_looks_like_jws():
    assert jwt.looks_like_jws(sign())
    assert jwt.looks_like_jws(forge({"alg": "none"}, claims()))  # shaped like one: verify refuses it
    for token in ["opaque-token-abc", "a.b", sign() + ".x", "a.b.c.d.e", f"{b64(b'not json')}.e30.", "..",
                  f"{b64(b'[1]')}.e30.", f"{b64({'typ': 'JWT'})}.e30.", f"{b64({'alg': 5})}.e30.",
                  f"{b64({'alg': 'RS256'})}.e30+.abc"]:
        assert not jwt.looks_like_jws(token), token


# -- forged and rejected tokens -------------------------------------------------------------------------

@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_alg_none_is_refused(alg):
    assert reason(forge({"alg": alg, "typ": "at+jwt", "kid": "rsa-1"}, claims())) == core.INVALID_TOKEN
    assert reason(forge({"alg": alg, "typ": "at+jwt"}, claims())) == core.INVALID_TOKEN


@pytest.mark.parametrize("secret", [RSA.as_pem(private=False), json.dumps(RSA.as_dict(private=False)).encode()])
def test_hs256_signed_with_the_rsa_public_key_as_secret_is_refused(secret):
    header = {"alg": "HS256", "typ": "at+jwt", "kid": "rsa-1"}
    signing_input = f"{b64(header)}.{b64(claims())}".encode()
    token = f"{signing_input.decode()}.{b64(hmac.new(secret, signing_input, hashlib.sha256).digest())}"
    assert reason(token) == core.INVALID_TOKEN
    # even when the policy lists HS256 (a configuration validated() refuses)
    careless = POLICY._replace(algorithms=("RS256", "HS256"))
    assert reason(token, policy=careless) == core.INVALID_TOKEN
    with pytest.raises(ValueError, match="HS256"):
        careless.validated()


def test_an_oct_key_in_the_jwks_is_never_used_even_under_the_kid_the_attacker_names():
    secret = b"attacker-knows-this-shared-secret"
    document = {"keys": [{"kty": "oct", "kid": "common", "k": b64(secret), "alg": "HS256"},
                         *public(RSA)]}
    keys = KeySet.from_jwks(json.dumps(document).encode())
    assert keys.kids == {"rsa-1"}
    header = {"alg": "HS256", "typ": "at+jwt", "kid": "common"}
    signing_input = f"{b64(header)}.{b64(claims())}".encode()
    token = f"{signing_input.decode()}.{b64(hmac.new(secret, signing_input, hashlib.sha256).digest())}"
    careless = POLICY._replace(algorithms=("RS256", "HS256"))
    assert reason(token, keys=keys, policy=careless) == core.INVALID_TOKEN
    assert keys.find("common", "HS256") is None


def test_typ_jwt_or_none_is_refused_when_at_jwt_is_required():
    assert reason(sign(typ="JWT")) == core.INVALID_TOKEN_TYPE
    assert reason(sign(typ=DROP)) == core.INVALID_TOKEN_TYPE


def test_without_require_typ_a_generic_or_missing_typ_passes_but_another_explicit_type_does_not():
    lenient = POLICY._replace(require_typ=False)
    assert check(sign(typ="JWT"), policy=lenient).active
    assert check(sign(typ=DROP), policy=lenient).active
    assert reason(sign(typ="id_token+jwt"), policy=lenient) == core.INVALID_TOKEN_TYPE
    assert reason(sign(typ="logout+jwt"), policy=lenient) == core.INVALID_TOKEN_TYPE


def test_wrong_audience_and_issuer():
    assert reason(sign(claims(aud="https://other.example.test"))) == core.INVALID_AUDIENCE
    assert reason(sign(claims(aud=["a", "b"]))) == core.INVALID_AUDIENCE
    assert reason(sign(claims(iss="https://evil.example.test"))) == core.INVALID_ISSUER
    assert reason(sign(claims(iss=ISSUER + "/"))) == core.INVALID_ISSUER  # exact match only


def test_expiry_beyond_the_skew_is_expired_and_within_it_passes():
    assert reason(sign(claims(exp=NOW - 31))) == core.TOKEN_EXPIRED
    assert check(sign(claims(exp=NOW - 29))).active


def test_nbf_or_iat_in_the_future_beyond_the_skew_is_not_yet_valid():
    assert reason(sign(claims(nbf=NOW + 31))) == core.TOKEN_NOT_YET_VALID
    assert reason(sign(claims(iat=NOW + 31))) == core.TOKEN_NOT_YET_VALID
    assert check(sign(claims(nbf=NOW + 29, iat=NOW + 29))).active


def test_a_tampered_payload_with_the_signature_kept_is_refused():
    header, _, signature = sign().split(".")
    assert reason(f"{header}.{b64(claims(sub='admin'))}.{signature}") == core.INVALID_TOKEN


def test_a_signature_swapped_from_another_token_of_the_same_key_is_refused():
    mine, other = sign(claims(sub="user-1")), sign(claims(sub="admin"))
    assert reason(mine.rsplit(".", 1)[0] + "." + other.rsplit(".", 1)[1]) == core.INVALID_TOKEN


@pytest.mark.parametrize("signature", [bytes(64), b"\x00" * 31 + b"\x01" + b"\x00" * 31 + b"\x01", b""])
def test_an_es256_signature_of_zeros_or_nothing_is_refused(signature):  # CVE-2022-21449, "psychic signatures"
    header = {"alg": "ES256", "typ": "at+jwt", "kid": "ec-1"}
    assert reason(forge(header, claims(), signature)) == core.INVALID_TOKEN


def test_an_unknown_kid_raises_unknown_key_for_a_refetch():
    with pytest.raises(UnknownKey) as raised:
        check(sign(key=RSA_2))
    assert raised.value.kid == "rsa-2"
    assert check(sign(key=RSA_2), keys=KeySet.from_jwks(jwks(RSA, RSA_2))).active


def test_the_attackers_key_under_a_known_kid_fails_the_signature():
    assert reason(sign(key=ATTACKER)) == core.INVALID_TOKEN


def test_an_algorithm_outside_the_allow_list_is_refused():
    only_rs256 = POLICY._replace(algorithms=("RS256",))
    assert reason(sign(alg="RS384"), policy=only_rs256) == core.INVALID_TOKEN
    assert reason(sign(alg="PS256"), policy=only_rs256) == core.INVALID_TOKEN
    assert check(sign(alg="RS384"), policy=POLICY._replace(algorithms=("RS384",))).active


def test_an_alg_the_named_key_cannot_verify_is_refused():
    assert reason(sign(alg="ES256", key=EC, kid="rsa-1")) == core.INVALID_TOKEN
    assert reason(sign(alg="RS256", key=RSA, kid="ec-1")) == core.INVALID_TOKEN
    assert reason(sign(alg="EdDSA", key=ED, kid="rsa-1")) == core.INVALID_TOKEN


def test_a_key_that_names_its_alg_verifies_no_other():
    keys = KeySet.from_jwks(json.dumps({"keys": [{**RSA.as_dict(private=False), "alg": "RS256"}]}).encode())
    assert check(sign(alg="RS256"), keys=keys).active
    assert reason(sign(alg="PS256"), keys=keys) == core.INVALID_TOKEN


@pytest.mark.parametrize("injected", [
    {"jwk": ATTACKER.as_dict(private=False)}, {"jku": "https://evil.example.test/jwks"},
    {"x5u": "https://evil.example.test/cert"}, {"x5c": ["MIIB"]},
])
def test_key_material_or_key_urls_in_the_header_are_refused(injected):
    assert reason(sign(key=ATTACKER, **injected)) == core.INVALID_TOKEN
    assert reason(sign(key=ATTACKER, kid="attacker", **injected)) == core.INVALID_TOKEN  # not UnknownKey
    assert reason(sign(key=RSA, **injected)) == core.INVALID_TOKEN  # refused even validly signed


def rs256_by_hand(header: dict, payload: dict) -> str:
    """A validly RS256-signed token with any header at all (joserfc's serializer checks headers)."""
    signing_input = f"{b64(header)}.{b64(payload)}"
    signature = jws.JWSRegistry.algorithms["RS256"].sign(signing_input.encode(), RSA)
    return f"{signing_input}.{b64(signature)}"


def test_the_hand_signer_makes_tokens_that_verify():
    assert check(rs256_by_hand({"alg": "RS256", "typ": "at+jwt", "kid": "rsa-1"}, claims())).active


@pytest.mark.parametrize("extra", [{"crit": ["exp"], "exp": 1}, {"crit": ["kid"]}, {"crit": []},
                                   {"zip": "DEF"}, {"cty": "JWT"}, {"enc": "A128GCM"}])
def test_crit_zip_and_nested_jwt_headers_are_refused(extra):
    assert reason(rs256_by_hand({"alg": "RS256", "typ": "at+jwt", "kid": "rsa-1", **extra}, claims())) \
        == core.INVALID_TOKEN


@pytest.mark.parametrize("header", [{"alg": "RS256", "typ": "at+jwt", "kid": 1},
                                    {"alg": "RS256", "typ": ["at+jwt"], "kid": "rsa-1"},
                                    {"alg": ["RS256"], "typ": "at+jwt", "kid": "rsa-1"}])
def test_header_parameters_of_the_wrong_type_are_refused(header):
    assert reason(rs256_by_hand(header, claims())) == core.INVALID_TOKEN


def test_an_unencoded_payload_b64_false_is_refused():
    header = {"alg": "RS256", "typ": "at+jwt", "kid": "rsa-1", "b64": False, "crit": ["b64"]}
    token = jws.serialize_compact(header, json.dumps(claims()), RSA, algorithms=["RS256"])
    assert reason(token) == core.INVALID_TOKEN


@pytest.mark.parametrize("token", [
    f"{b64(b'not json')}.{b64(claims())}.abc", f"{b64(b'[]')}.{b64(claims())}.abc",
    "a.b", "a.b.c.d", "", "...", sign() + "." + "x",
])
def test_malformed_tokens_are_refused(token):
    assert reason(token) == core.INVALID_TOKEN


def test_a_non_json_payload_validly_signed_is_refused():
    token = jws.serialize_compact({"alg": "RS256", "typ": "at+jwt", "kid": "rsa-1"}, b"plain text", RSA,
                                  algorithms=["RS256"])
    assert reason(token) == core.INVALID_TOKEN


def test_huge_segments_are_refused_without_work():
    assert reason(sign(claims(padding="x" * jwt.MAX_TOKEN_LENGTH))) == core.INVALID_TOKEN
    assert reason(sign(padding="x" * jwt.MAX_HEADER_LENGTH)) == core.INVALID_TOKEN
    header, payload, _ = sign().split(".")
    assert reason(f"{header}.{payload}.{'A' * (jwt.MAX_SIGNATURE_LENGTH + 4)}") == core.INVALID_TOKEN


@pytest.mark.parametrize("changes", [
    {"exp": str(int(NOW + 300))}, {"exp": True}, {"exp": DROP}, {"iat": "0"}, {"iat": DROP}, {"nbf": "0"},
    {"aud": 5}, {"aud": []}, {"aud": [AUDIENCE, 1]}, {"aud": DROP}, {"scope": ["read", "write"]},
    {"sub": DROP}, {"sub": ""}, {"sub": 42}, {"iss": DROP}, {"iss": [ISSUER]}, {"client_id": 7},
    {"jti": 1}, {"token_type": ["bearer"]},
])
def test_claims_of_the_wrong_type_or_missing_are_refused(changes):
    assert reason(sign(claims(**changes))) == core.INVALID_TOKEN


def test_client_id_and_jti_are_not_required():
    assert check(sign(claims(client_id=DROP, jti=DROP))).active


# -- key sets -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("body", [b"", b"not json", b"[]", b'{"keys": {}}', b'{"kty": "RSA"}',
                                  json.dumps({"keys": [{}] * (jwt.MAX_JWKS_KEYS + 1)}).encode()])
def test_a_document_that_is_not_a_jwks_is_a_value_error(body):
    with pytest.raises(ValueError):
        KeySet.from_jwks(body)


def test_unusable_keys_are_skipped():
    with warnings.catch_warnings():  # joserfc warns of the small key, as it should
        warnings.simplefilter("ignore")
        small = RSAKey.generate_key(1024, parameters={"kid": "small"})
    x25519 = OKPKey.generate_key("X25519", parameters={"kid": "x"})
    document = {"keys": [
        {**RSA_2.as_dict(private=False), "use": "enc"},
        {**EC.as_dict(private=False), "kid": "ops", "key_ops": ["encrypt"]},
        {"kty": "XYZ", "kid": "strange"},
        {"kty": "RSA", "kid": "broken", "n": "AQAB", "e": "%%%"},
        {**RSA.as_dict(private=True), "kid": "leaked"},
        small.as_dict(private=False), x25519.as_dict(private=False), "not an object",
        ED.as_dict(private=False),
    ]}
    keys = KeySet.from_jwks(json.dumps(document).encode())
    assert keys.kids == {"ed-1"}
    with pytest.raises(UnknownKey):  # a published private key proves nothing: it is not a key of the set
        check(sign(key=RSA, kid="leaked"), keys=keys)


def test_without_kid_exactly_one_fitting_key_is_used():
    assert check(sign(alg="ES256", key=EC, kid=DROP)).active  # one EC key among RSA, EC, Ed25519
    two_rsa = KeySet.from_jwks(jwks(RSA, RSA_2))
    assert two_rsa.find(None, "RS256") is None
    assert reason(sign(kid=DROP), keys=two_rsa) == core.INVALID_TOKEN
    with pytest.raises(UnknownKey):  # no key fits at all: a refetch may bring one
        check(sign(kid=DROP), keys=KeySet.from_jwks(jwks(EC)))


# -- Cache-Control and refresh --------------------------------------------------------------------------

@pytest.mark.parametrize("header, expected", [
    (None, 600), ("", 600), ("max-age=3600", 3600), ("public, max-age=300", 300), ('max-age="900"', 900),
    ("MAX-AGE=120", 120), ("max-age=5", jwt.MIN_KEYSET_AGE), ("max-age=99999999", jwt.MAX_KEYSET_AGE),
    ("no-store", jwt.MIN_KEYSET_AGE), ("max-age=3600, no-cache", jwt.MIN_KEYSET_AGE),
    ("max-age=-5", 600), ("max-age=abc", 600), ("private", 600), ("s-maxage=3600", 600),
])
def test_keyset_max_age(header, expected):
    assert jwt.keyset_max_age(header, 600) == expected


def test_refresh_is_due_at_once_then_after_max_age():
    state = KeyRefresh(refresh_seconds=600, min_refetch_seconds=30)
    assert state.keys is None and state.due(0.0)
    assert state.fetched(200, jwks(RSA), "max-age=3600", 10.0)
    assert state.keys.kids == {"rsa-1"}
    assert not state.due(10.0 + 3599) and state.due(10.0 + 3600)
    assert state.fetched(200, jwks(RSA), None, 5000.0)
    assert not state.due(5000.0 + 599) and state.due(5000.0 + 600)


@pytest.mark.parametrize("status, body", [
    (500, b""), (404, jwks(RSA_2)), (200, b"<html>"), (200, b'{"keys": []}'),
    (200, b'{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}'),
])
def test_a_failed_fetch_keeps_the_known_keys_and_retries_after_the_minimum(status, body):
    state = KeyRefresh(refresh_seconds=600, min_refetch_seconds=30)
    state.fetched(200, jwks(RSA), None, 0.0)
    assert not state.fetched(status, body, "max-age=86400", 600.0)
    assert state.keys.kids == {"rsa-1"}
    assert check(sign(), keys=state.keys).active
    assert not state.due(629.0) and state.due(630.0)


def test_failed_fetches_keep_the_keys_a_day_at_most_after_the_last_success():
    """A key the issuer withdrew (compromised, say) must not pass forever while its JWKS cannot be fetched."""
    state = KeyRefresh(refresh_seconds=600, min_refetch_seconds=30)
    state.fetched(200, jwks(RSA), None, 0.0)
    assert not state.fetched(503, b"", None, jwt.KEYS_HELD_AT_MOST)
    assert state.keys.kids == {"rsa-1"}
    assert not state.fetched(503, b"", None, jwt.KEYS_HELD_AT_MOST + 1)
    assert state.keys is None
    assert state.fetched(200, jwks(RSA), None, jwt.KEYS_HELD_AT_MOST + 31)  # held again once a fetch succeeds
    assert not state.fetched(503, b"", None, 2 * jwt.KEYS_HELD_AT_MOST)
    assert state.keys.kids == {"rsa-1"}


def test_a_failed_first_fetch_leaves_no_keys_and_is_retried_after_the_minimum():
    state = KeyRefresh(refresh_seconds=600, min_refetch_seconds=30)
    assert not state.fetched(503, b"", None, 0.0)
    assert state.keys is None
    assert not state.due(29.0) and state.due(30.0)


def test_unknown_kid_refetches_are_rate_limited():
    state = KeyRefresh(refresh_seconds=600, min_refetch_seconds=30)
    state.fetched(200, jwks(RSA), None, 100.0)
    assert not state.may_refetch(110.0)  # the keys are 10 s old
    assert state.may_refetch(130.0)
    assert not state.may_refetch(130.5)  # granted once: concurrent forged kids cause one fetch
    assert not state.may_refetch(159.0)
    assert state.may_refetch(160.0)


def test_rotation_a_new_kid_appears_after_a_refetch_and_the_old_one_is_dropped():
    state = KeyRefresh(refresh_seconds=600, min_refetch_seconds=30)
    state.fetched(200, jwks(RSA), None, 0.0)
    token = sign(key=RSA_2)
    with pytest.raises(UnknownKey):
        check(token, keys=state.keys)
    assert state.may_refetch(60.0)
    assert state.fetched(200, jwks(RSA_2), None, 60.0)
    assert check(token, keys=state.keys).active
    with pytest.raises(UnknownKey):  # the retired key no longer verifies anything
        check(sign(key=RSA), keys=state.keys)


def test_the_jwks_request():
    request = KeyRefresh(600, 30).request("https://as.example.test/jwks")
    assert (request.method, request.url, request.form) == ("GET", "https://as.example.test/jwks", None)
    assert "application/json" in request.headers["Accept"]


def test_policy_validation():
    assert POLICY.validated() is POLICY
    for bad in [POLICY._replace(algorithms=()), POLICY._replace(algorithms=("none",)),
                POLICY._replace(issuers=()), POLICY._replace(audiences=("",)),
                POLICY._replace(clock_skew=-1)]:
        with pytest.raises(ValueError):
            bad.validated()


def test_the_module_is_sans_io():
    """No framework, HTTP client, cache, clock or socket: the integrator passes time and bytes in."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(jwt))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module and node.level == 0}
    assert not imported & {"falcon", "httpx", "dogpile", "time", "socket", "urllib", "datetime", "requests"}
