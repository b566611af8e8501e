"""The OpenAPI document at /openapi.json is valid OpenAPI 3.1, and the app's real answers (both app
kinds, both dialects, every status) match it."""

from __future__ import annotations

import httpx
import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_spec
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from falcon_oauth import __version__
from tests.conftest import contract
from tests.fakes import FakeAuthServer, fake_settings

API_KEY = "openapi-key-0123456789"


def escape(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


def check(document: dict, path: str, method: str, result) -> None:
    """``result`` (a Falcon test result) matches the documented answer for its status."""
    responses = document["paths"][path][method]["responses"]
    status = str(result.status_code)
    assert status in responses, f"{method.upper()} {path} answered {status}, which is not documented"
    pointer = f"/paths/{escape(path)}/{method}/responses/{status}"
    response = responses[status]
    if "$ref" in response:
        pointer = response["$ref"][1:]
        response = document["components"]["responses"][pointer.rsplit("/", 1)[1]]
    media_type = result.headers["Content-Type"].split(";")[0]
    assert media_type in response["content"]
    if media_type != "application/json":
        return
    registry = Registry().with_resource("urn:api", Resource(contents=document, specification=DRAFT202012))
    schema = {"$ref": f"urn:api#{pointer}/content/{escape(media_type)}/schema"}
    Draft202012Validator(schema, registry=registry).validate(result.json)
    for header in response.get("headers", {}):
        assert header in result.headers


@pytest.fixture()
def document(make_client) -> dict:
    result = make_client(fake_settings(), FakeAuthServer()).simulate_get("/openapi.json")
    assert result.status_code == 200
    return result.json


def test_the_document_is_valid_openapi_3_1_with_this_version(document):
    validate_spec(document)
    assert document["openapi"] == "3.1.0" and document["info"]["version"] == __version__


def test_every_answer_matches_the_document(make_client, document):
    def auth_server(request):
        token = dict(x.split("=") for x in request.content.decode().split("&"))["token"]
        if token.startswith("down"):
            return httpx.Response(503)
        if token.startswith("inactive"):
            return httpx.Response(200, json={"active": False})
        return httpx.Response(200, json={"active": True, "sub": "u", "scope": "read", "email": "u@x.test"})

    keyed = make_client(fake_settings(PLUGIN_API_KEY=API_KEY, REQUIRED_SCOPES="read"), FakeAuthServer(auth_server))
    key = {"X-API-Key": API_KEY}
    post = "/plugin/authenticate"
    answers = []
    for name in ("sdk_request_valid.json", "sdk_request_header_token.json", "host_request_query_token.json",
                 "host_request_custom_token.json"):
        for token in ("good", "inactive", "down", "bad token"):
            answers.append(keyed.simulate_post(post, json=contract(name, token), headers=key))
    scoped = make_client(fake_settings(REQUIRED_SCOPES="admin"), FakeAuthServer(auth_server))
    answers += [scoped.simulate_post(post, json=contract("host_request_query_token.json", "good")),
                scoped.simulate_post(post, json=contract("sdk_request_valid.json", "good"))]
    routed = make_client(fake_settings(ROUTES='[{"path": "/admin/**", "scopes": ["admin"]}]'),
                         FakeAuthServer(auth_server))
    answers += [routed.simulate_post(post, json={"method": "GET", "uri": "/admin%2Fx", "context": {"custom": {
                    "token": "good"}}}),
                routed.simulate_post(post, json={"context": {"method": " GET", "uri": "/x"},
                                                 "credentials": {"token": "good"}}),
                keyed.simulate_post("/" + post, json=contract("sdk_request_valid.json", "good"), headers=key)]
    answers += [keyed.simulate_post(post, body=b"{", headers={**key, "Content-Type": "application/json"}),
                keyed.simulate_post(post, body=b"x" * 70000, headers={**key, "Content-Type": "application/json"}),
                keyed.simulate_post(post, body=b"token=x", headers={**key, "Content-Type": "text/plain"}),
                keyed.simulate_post(post, json=contract("sdk_request_valid.json", "good"))]
    statuses = {a.status_code for a in answers}
    assert statuses == {200, 400, 401, 413, 415, 503}
    for answer in answers:
        check(document, post, "post", answer)

    purge = "/plugin/cache/purge"
    for result in (keyed.simulate_post(purge, json={"all": True}, headers=key),
                   keyed.simulate_post(purge, json={"token": "good"}, headers=key),
                   keyed.simulate_post(purge, json={"nope": 1}, headers=key),
                   keyed.simulate_post(purge, json={"all": True}),
                   make_client(fake_settings(), FakeAuthServer()).simulate_post(purge, json={"all": True})):
        check(document, purge, "post", result)

    for path in ("/health", "/health/ready", "/metrics", "/openapi.json"):
        check(document, path, "get", keyed.simulate_get(path))
        refused = keyed.simulate_get("/." + path)
        assert refused.status_code == 400 and refused.json["error"] == "non_canonical_path"
        check(document, path, "get", refused)
    down = make_client(fake_settings(), FakeAuthServer(lambda request: httpx.Response(503)))
    unready = down.simulate_get("/health/ready")
    assert unready.status_code == 503
    check(document, "/health/ready", "get", unready)
