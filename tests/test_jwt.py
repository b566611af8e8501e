"""JWT access tokens (RFC 9068) validated locally, end to end in both modes and both dialects: against
oidc-provider issuing real JWT access tokens, and against a small loopback issuer whose keys a test rotates
and whose JWKS fetches it counts, for the attacks (tests/test_jwt_core.py has every one of them at the
unit level). Time moves by injected clocks."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from http.server import ThreadingHTTPServer

import falcon.testing
import pytest
from joserfc import jws
from joserfc.jwk import ECKey, RSAKey
from prometheus_client import REGISTRY

from falcon_oauth.app import create_app
from falcon_oauth.discovery import discover_at_start
from falcon_oauth.settings import SettingsError, load_settings
from tests.conftest import JsonHandler, free_port, host_body
from tests.fakes import sdk_body

AUDIENCE = "https://api.example.test"
RSA_A = RSAKey.generate_key(2048, parameters={"kid": "key-a"})
RSA_B = RSAKey.generate_key(2048, parameters={"kid": "key-b"})
EC = ECKey.generate_key("P-256", parameters={"kid": "key-ec"})


class Issuer:
    """A loopback issuer: publishes a JWKS a test can change (counting its fetches) and answers
    introspection with 500 (counting those calls too: a JWT must never cause one)."""

    def __init__(self) -> None:
        self.keys = [RSA_A, EC]
        self.jwks_status = 200
        self.jwks_fetches = 0
        self.introspections = 0
        self.fetching = threading.Event()  # set by each JWKS fetch as it arrives
        self.hold = threading.Event()  # cleared by a test: the JWKS answer waits for it (a hung issuer)
        self.hold.set()
        owner = self

        class Handler(JsonHandler):
            def do_GET(self) -> None:  # noqa: N802
                owner.jwks_fetches += 1
                owner.fetching.set()
                owner.hold.wait(10)
                body = {"keys": [k.as_dict(private=False) for k in owner.keys]}
                self.answer(owner.jwks_status, json.dumps(body).encode())

            def do_POST(self) -> None:  # noqa: N802
                self.form()  # read, so the kept-alive connection's next request starts where it should
                owner.introspections += 1
                self.answer(500, b'{"error": "server_error"}')

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def environ(self, **extra: str) -> dict[str, str]:
        return {"AUTH_SERVER_URL": self.url, "INTROSPECTION_ENDPOINT": "/introspect", "OAUTH_CLIENT_SECRET": "s",
                "JWT_VALIDATION": "true", "JWKS_URI": "/jwks", "AUDIENCES": AUDIENCE, "AUTH_SERVER_RETRIES": "0",
                **extra}

    def claims(self, **changes: object) -> dict:
        now = int(time.time())
        claims = {"iss": self.url, "aud": AUDIENCE, "sub": "user-42", "client_id": "app", "iat": now - 5,
                  "exp": now + 300, "jti": uuid.uuid4().hex, "scope": "read write"}
        claims.update(changes)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, key=RSA_A, alg: str = "RS256", header: dict | None = None, **claims: object) -> str:
        registry = jws.JWSRegistry(algorithms=[alg], strict_check_header=False)
        protected = {"alg": alg, "typ": "at+jwt", "kid": key.kid, **(header or {})}
        return jws.serialize_compact(protected, json.dumps(self.claims(**claims)), key, registry=registry)


@pytest.fixture()
def issuer():
    server = Issuer()
    yield server
    server.server.shutdown()
    server.server.server_close()


class Clock:
    def __init__(self) -> None:
        self.now, self.mono = time.time(), 1000.0

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.mono += seconds

    @property
    def clocks(self) -> dict:
        return {"clock": lambda: self.now, "monotonic": lambda: self.mono}


def verdict(client, token: str) -> dict:
    answer = client.simulate_post("/plugin/authenticate", json=host_body(token))
    assert answer.status_code == 200, answer.text
    return answer.json


def b64(data: bytes | dict) -> str:
    if isinstance(data, dict):
        data = json.dumps(data).encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt_count(result: str) -> float:
    return REGISTRY.get_sample_value("falcon_oauth_jwt_verifications_total", {"result": result}) or 0.0


# -- a valid JWT --------------------------------------------------------------------------------------------

def test_a_valid_jwt_is_authenticated_in_both_dialects_without_a_call_to_the_server(make_client, issuer):
    client = make_client(load_settings(issuer.environ()))
    before = jwt_count("valid")
    body = verdict(client, issuer.token())
    assert body["authenticated"] is True and body["identity"]["user_id"] == "user-42"
    assert body["claims"]["scope"] == "read write" and body["metadata"] == {"cache": "miss"}
    assert verdict(client, issuer.token(key=EC, alg="ES256"))["authenticated"] is True
    sdk = client.simulate_post("/plugin/authenticate", body=sdk_body(issuer.token()),
                               headers={"Content-Type": "application/json"}).json["result"]
    assert sdk["authenticated"] is True and sdk["user_id"] == "user-42"
    assert issuer.introspections == 0 and issuer.jwks_fetches == 1
    assert jwt_count("valid") == before + 3


def test_a_repeated_jwt_is_a_cache_hit_without_a_second_verification(make_client, issuer):
    client = make_client(load_settings(issuer.environ()))
    token = issuer.token()
    before = jwt_count("valid")
    assert verdict(client, token)["metadata"] == {"cache": "miss"}
    assert jwt_count("valid") == before + 1
    for _ in range(3):  # the cache is asked first: the signature is verified on a miss only
        assert verdict(client, token)["metadata"] == {"cache": "hit"}
    assert jwt_count("valid") == before + 1 and issuer.introspections == 0


def test_a_cached_jwt_verdict_never_outlives_the_tokens_exp(make_client, issuer):
    clock = Clock()
    client = make_client(load_settings(issuer.environ(CLOCK_SKEW_SECONDS="0", CACHE_TTL="300")), **clock.clocks)
    token = issuer.token(exp=int(clock.now) + 30)
    assert verdict(client, token)["authenticated"] is True
    clock.advance(25)
    assert verdict(client, token)["metadata"] == {"cache": "hit"}
    clock.advance(6)  # past exp, well within CACHE_TTL: the entry is gone, the token verified again and refused
    before = jwt_count("rejected")
    answer = verdict(client, token)
    assert answer["authenticated"] is False and answer["error_message"] == "token_expired"
    assert answer["metadata"] == {"cache": "miss"} and jwt_count("rejected") == before + 1


def test_local_policy_applies_to_jwt_claims_as_to_introspected_ones(make_client, issuer):
    routes = json.dumps([{"path": "/admin/**", "scopes": ["admin"]}])
    client = make_client(load_settings(issuer.environ(ROUTES=routes, REQUIRED_SCOPES="read")))
    assert verdict(client, issuer.token(scope="write"))["error_message"] == "insufficient_scope"
    body = host_body(issuer.token())
    body["uri"] = "/api/../admin/users"
    answer = client.simulate_post("/plugin/authenticate", json=body).json
    assert answer["authenticated"] is False and answer["error_message"] == "insufficient_scope"
    body["query_params"]["access_token"] = issuer.token(scope="read admin")
    assert client.simulate_post("/plugin/authenticate", json=body).json["authenticated"] is True


def test_opaque_tokens_still_go_to_introspection(make_client, issuer):
    client = make_client(load_settings(issuer.environ()))
    answer = client.simulate_post("/plugin/authenticate", json=host_body("an-opaque-token"))
    assert answer.status_code == 503 and issuer.introspections == 1  # the issuer answers introspection 500


# -- attacks ----------------------------------------------------------------------------------------------

def forgeries(issuer: Issuer) -> dict[str, tuple[str, str]]:
    """A token for each attack, and the rejection it must get."""
    good = issuer.token()
    header, payload, signature = good.split(".")
    public_pem = RSA_A.as_pem(private=False)
    hs_header = b64({"alg": "HS256", "typ": "at+jwt", "kid": "key-a"})
    hs_payload = b64(issuer.claims())
    hs_signature = b64(hmac.new(public_pem, f"{hs_header}.{hs_payload}".encode(), hashlib.sha256).digest())
    tampered = b64({**issuer.claims(), "sub": "admin"})
    return {
        "alg none": (f"{b64({'alg': 'none', 'typ': 'at+jwt'})}.{b64(issuer.claims())}.", "invalid_token"),
        "HS256 with the public key": (f"{hs_header}.{hs_payload}.{hs_signature}", "invalid_token"),
        "typ JWT": (issuer.token(header={"typ": "JWT"}), "invalid_token_type"),
        "wrong aud": (issuer.token(aud="https://other.example.test"), "invalid_audience"),
        "wrong iss": (issuer.token(iss="https://evil.example.test"), "invalid_issuer"),
        "expired": (issuer.token(exp=int(time.time()) - 3600, iat=int(time.time()) - 7200), "token_expired"),
        "not yet valid": (issuer.token(nbf=int(time.time()) + 3600), "token_not_yet_valid"),
        "tampered payload": (f"{header}.{tampered}.{signature}", "invalid_token"),
        "signed by an attacker's key of the same kid": (
            issuer.token(key=RSAKey.generate_key(2048, parameters={"kid": "key-a"})), "invalid_token"),
        "unknown kid": (issuer.token(key=RSA_B), "invalid_token"),
        "key in the header (jwk)": (issuer.token(header={"jwk": RSA_B.as_dict(private=False)}), "invalid_token"),
    }


@pytest.mark.parametrize("attack", [
    "alg none", "HS256 with the public key", "typ JWT", "wrong aud", "wrong iss", "expired", "not yet valid",
    "tampered payload", "signed by an attacker's key of the same kid", "unknown kid", "key in the header (jwk)"])
def test_every_forgery_is_rejected_and_never_reaches_introspection(make_client, issuer, attack):
    client = make_client(load_settings(issuer.environ()))
    token, reason = forgeries(issuer)[attack]
    body = verdict(client, token)
    assert body["authenticated"] is False and body["error_message"] == reason
    sdk = client.simulate_post("/plugin/authenticate", body=sdk_body(token),
                               headers={"Content-Type": "application/json"}).json["result"]
    assert sdk["authenticated"] is False and sdk["claims"]["error"] == reason
    assert issuer.introspections == 0


def test_a_kid_spray_costs_the_server_a_handful_of_fetches(issuer, asgi):
    app = create_app(load_settings(issuer.environ()), asgi=asgi)
    tokens = [issuer.token(key=RSA_B, header={"kid": f"made-up-{i}"}) for i in range(60)]
    if asgi:
        async def run():
            async with falcon.testing.ASGIConductor(app) as conductor:
                return await asyncio.gather(*(conductor.simulate_post("/plugin/authenticate", json=host_body(t))
                                              for t in tokens))
        answers = [a.json for a in asyncio.run(run())]
    else:
        client = falcon.testing.TestClient(app)
        answers = [verdict(client, t) for t in tokens]
    assert all(a["authenticated"] is False and a["error_message"] == "invalid_token" for a in answers)
    assert issuer.jwks_fetches <= 2 and issuer.introspections == 0


# -- keys ---------------------------------------------------------------------------------------------------

def test_a_rotation_is_followed_without_a_restart(make_client, issuer):
    clock = Clock()
    client = make_client(load_settings(issuer.environ()), **clock.clocks)
    assert verdict(client, issuer.token(key=RSA_A))["authenticated"] is True
    issuer.keys = [RSA_B]  # key-b published, key-a dropped
    clock.advance(11)  # a refetch at most every JWKS_MIN_REFETCH_SECONDS (10), counted from the last fetch
    assert verdict(client, issuer.token(key=RSA_B))["authenticated"] is True  # unknown kid: one refetch
    assert issuer.jwks_fetches == 2
    assert verdict(client, issuer.token(key=RSA_A))["error_message"] == "invalid_token"  # dropped, refetch too soon
    assert issuer.jwks_fetches == 2
    clock.advance(11)  # past JWKS_MIN_REFETCH_SECONDS
    assert verdict(client, issuer.token(key=RSA_A))["error_message"] == "invalid_token"
    assert issuer.jwks_fetches == 3


def test_a_refusal_for_a_key_not_yet_published_is_not_cached(make_client, issuer):
    """A spray of made-up kids may take the refetch a rotated-in key needed: its first tokens are refused then,
    but not remembered as refused, so they pass once a refetch finds the key."""
    clock = Clock()
    client = make_client(load_settings(issuer.environ(CACHE_NEGATIVE_TTL="300")), **clock.clocks)
    early = issuer.token(key=RSA_B)  # key-b is not published yet
    assert verdict(client, early)["error_message"] == "invalid_token"
    issuer.keys = [RSA_A, RSA_B]
    clock.advance(11)  # past JWKS_MIN_REFETCH_SECONDS, well within CACHE_NEGATIVE_TTL
    assert verdict(client, early)["authenticated"] is True
    assert issuer.jwks_fetches == 2


def test_a_failed_jwks_fetch_keeps_the_keys_held(make_client, issuer):
    clock = Clock()
    client = make_client(load_settings(issuer.environ(JWKS_REFRESH_SECONDS="300")), **clock.clocks)
    assert verdict(client, issuer.token())["authenticated"] is True
    issuer.jwks_status = 503
    clock.advance(301)
    assert verdict(client, issuer.token())["authenticated"] is True
    assert issuer.jwks_fetches == 2


def test_a_hung_jwks_refresh_holds_up_only_the_request_that_makes_it(issuer, asgi):
    clock = Clock()
    app = create_app(load_settings(issuer.environ(JWKS_REFRESH_SECONDS="300", AUTH_SERVER_TIMEOUT="5")), asgi=asgi,
                     **clock.clocks)
    first, second, third = (issuer.token(jti=uuid.uuid4().hex) for _ in range(3))

    def hang() -> None:  # a refresh is due, and the issuer now hangs
        clock.advance(301)
        issuer.hold.clear()
        issuer.fetching.clear()

    if asgi:
        async def run():
            async with falcon.testing.ASGIConductor(app) as conductor:
                assert (await conductor.simulate_post("/plugin/authenticate", json=host_body(first))).json[
                    "authenticated"] is True  # keys fetched
                hang()
                refreshing = asyncio.ensure_future(conductor.simulate_post("/plugin/authenticate",
                                                                           json=host_body(second)))
                while not issuer.fetching.is_set():
                    await asyncio.sleep(0.01)
                other = await asyncio.wait_for(conductor.simulate_post("/plugin/authenticate",
                                                                       json=host_body(third)), 3)
                held = not refreshing.done()
                issuer.hold.set()
                return other.json, held, (await refreshing).json
        other, held, refreshed = asyncio.run(run())
    else:
        client = falcon.testing.TestClient(app)
        assert verdict(client, first)["authenticated"] is True
        hang()
        with ThreadPoolExecutor(1) as pool:
            refreshing = pool.submit(verdict, client, second)
            assert issuer.fetching.wait(5)
            other = verdict(client, third)
            held = not refreshing.done()
            issuer.hold.set()
            refreshed = refreshing.result()
    assert other["authenticated"] is True and held  # answered with the keys held while the refresh hung
    assert refreshed["authenticated"] is True and issuer.jwks_fetches == 2


def test_no_jwks_yet_is_503_never_a_verdict(make_client, issuer):
    issuer.jwks_status = 503
    client = make_client(load_settings(issuer.environ()))
    answer = client.simulate_post("/plugin/authenticate", json=host_body(issuer.token()))
    assert answer.status_code == 503 and answer.json["error_message"] == "auth_server_unavailable"


def test_readiness_with_jwts_follows_the_keys_held(make_client, issuer):
    client = make_client(load_settings(issuer.environ()))
    ready = client.simulate_get("/health/ready")
    assert ready.status_code == 200 and ready.json["jwks"] == "ok"
    assert ready.json["auth_server"] != "ok"  # introspection answers 500 here: said, but JWTs still work
    issuer.jwks_status = 503
    down = make_client(load_settings(issuer.environ()))
    assert down.simulate_get("/health/ready").status_code == 503


@pytest.mark.parametrize("change, key", [
    ({"AUDIENCES": ""}, "AUDIENCES"),
    ({"JWT_ALGORITHMS": "RS256 HS256"}, "JWT_ALGORITHMS"),
    ({"JWT_ALGORITHMS": "none"}, "JWT_ALGORITHMS"),
    ({"JWKS_URI": ""}, "JWKS_URI"),
])
def test_jwt_validation_refuses_to_start_without_what_it_needs(issuer, change, key):
    with pytest.raises(SettingsError) as error:
        load_settings(issuer.environ(**change))
    assert error.value.key == key


# -- a real issuer ----------------------------------------------------------------------------------------

def jwt_access_token(authserver, scope: str = "read write") -> str:
    answer = authserver.http.post("/token", data={"grant_type": "client_credentials", "scope": scope,
                                                  "resource": "https://jwt.example.test"},
                                  auth=("app", "app-secret"))
    answer.raise_for_status()
    return answer.json()["access_token"]


def test_oidc_provider_jwt_access_tokens_are_verified_by_the_discovered_jwks(make_client, authserver):
    # introspection at a closed port: a JWT must not need it
    settings = discover_at_start(authserver.settings(
        JWT_VALIDATION="true", OIDC_DISCOVERY="true", AUDIENCES="https://jwt.example.test",
        INTROSPECTION_ENDPOINT=f"http://127.0.0.1:{free_port()}/introspect"))
    assert settings.jwks_url == f"{authserver.url}/jwks"
    client = make_client(settings)
    token = jwt_access_token(authserver)
    assert token.count(".") == 2
    body = verdict(client, token)
    assert body["authenticated"] is True and body["identity"]["user_id"] == "app"
    assert body["claims"]["client_id"] == "app" and body["claims"]["scope"] == "read write"
    sdk = client.simulate_post("/plugin/authenticate", body=sdk_body(jwt_access_token(authserver, "read")),
                               headers={"Content-Type": "application/json"}).json["result"]
    assert sdk["authenticated"] is True and sdk["claims"]["scope"] == "read"
    opaque = client.simulate_post("/plugin/authenticate", json=host_body(authserver.token()))
    assert opaque.status_code == 503  # opaque tokens still go to introspection, closed here


def test_oidc_provider_jwts_for_another_audience_are_rejected(make_client, authserver):
    settings = discover_at_start(authserver.settings(JWT_VALIDATION="true", OIDC_DISCOVERY="true",
                                                     AUDIENCES="https://somebody-else.example.test"))
    client = make_client(settings)
    assert verdict(client, jwt_access_token(authserver))["error_message"] == "invalid_audience"
