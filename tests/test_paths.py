"""Route rules match a canonical path, and no spelling of a path or a method slips a request past a rule:
the sans-IO core (tables and hypothesis properties against an independent model of how servers read a
path), then both dialects over HTTP, both app kinds, against oidc-provider."""

from __future__ import annotations

import json
import re
import unicodedata
from urllib.parse import unquote

import hypothesis.strategies as st
import pytest
from hypothesis import example, given, settings

from falcon_oauth import core
from falcon_oauth.core import Introspected, Policy, Route
from falcon_oauth.settings import SettingsError, load_settings

NOW = 1_800_000_000
READ_WRITE = Introspected(True, {"sub": "u", "scope": "read write"})
ADMIN = Policy(routes=(Route("/admin/**", ("admin",)),))
ORDERS = Policy(routes=(Route("/api/orders/*", ("orders:write",), frozenset({"POST"})),))


def decide(policy: Policy, method: str | None, uri: str | None, record: Introspected = READ_WRITE) -> core.Verdict:
    return core.decide(record, NOW, 0, policy, method, uri)


# -- the canonical path ---------------------------------------------------------------------------------

@pytest.mark.parametrize("uri, canonical", [
    ("/admin/users", "/admin/users"), ("/admin/users?x=1", "/admin/users"), ("/admin?/../x", "/admin"),
    ("/api/../admin/users", "/admin/users"), ("/./admin/users", "/admin/users"), ("//admin/users", "/admin/users"),
    ("/%61dmin/users", "/admin/users"), ("/file%2etxt", "/file.txt"), ("/admin/x/..", "/admin/"),
    ("/a/./", "/a/"), ("/..", "/"), ("/.well-known/x", "/.well-known/x"), ("/a/.../b", "/a/.../b"),
    ("/caf%C3%A9", "/café"), ("/café", "/café"), ("/a/%7euser", "/a/~user"), ("/", "/"),
])
def test_the_canonical_path_comes_first(uri, canonical):
    assert core.route_paths(uri)[0] == canonical


def test_a_path_a_server_may_read_otherwise_names_every_reading():
    assert core.route_paths("/admin/../x") == ("/x", "/admin/../x")  # a server that keeps `..` routes /admin/..
    assert core.route_paths("/a/.//b") == ("/a/b", "/a//b", "/a/./b", "/a/.//b")
    assert core.route_paths("/api/users") == ("/api/users",)


@pytest.mark.parametrize("uri", [
    None, "", "admin/users", " /admin", "*", "http://host/admin/users", "https://host/admin",
    "/admin%2Fusers", "/admin%2fusers", "/admin\\users", "/admin%5Cusers", "/admin%5cusers",
    "/admin\nusers", "/admin/users\n", "/admin\r\n", "/admin\t/x", "/admin\x00", "/admin%00/x", "/admin\x7f",
    "/admin%7F", "/admin%0a", "/admin /x", "/admin%20", "/admin%252Fusers", "/admin%25", "/admin%", "/admin%4",
    "/admin%zz", "/admin;x/users", "/admin%3Bx/users", "/admin%3F/../x", "/x#/../admin", "/admin%23",
    "/ａdmin/users", "/admin／users", "/admin\u200b/users", "/admin\u202e", "/admin\u00a0", "/x/\u2025/admin",
    "/caf%C0%AF", "/a%C0%AE%C0%AE/admin", "/%FF", "//../admin", "/admin//../x", "/x/..//admin/..",
    "/%2e%2E/admin", "/x/%2e./admin", "/x/.%2E/admin", "/./admin/%2E%2e", "/%2e/admin/%2e/..",
])
def test_an_ambiguous_path_has_no_reading(uri):
    assert core.route_paths(uri) is None


@pytest.mark.parametrize("rule, path, covered", [
    ("/x/**", "/x", True), ("/x/**", "/x/", True), ("/x/**", "/x/a/b", True), ("/x/**", "/xy", False),
    ("/x", "/x/", True), ("/x/", "/x", True), ("/x/*", "/x/a", True), ("/x/*", "/x/a/b", False),
    ("/a/**/b", "/a/b", True), ("/a/**/b", "/a/1/2/b", True), ("/a?c", "/abc", True), ("/a?c", "/a/c", False),
    ("/", "/", True), ("/", "/a", False), ("/admin/**", "/ADMIN/users", False),  # paths are case-sensitive
])
def test_glob_coverage(rule, path, covered):
    assert Route(rule, ("s",)).matches("GET", path) is covered


GLOB_SEGMENTS = ["a", "b", "ab", "*", "?", "**", "a*", "*b", "a?b", "*a*", "?*?", "**"]
PATH_SEGMENTS = ["a", "b", "ab", "aab", "ba", "abab", "", "x"]


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.sampled_from(GLOB_SEGMENTS), max_size=5), st.lists(st.sampled_from(PATH_SEGMENTS), max_size=6),
       st.booleans())
def test_globs_match_as_the_regular_expression_they_stand_for(globs, segments, trailing_slash):
    rule, path = "/" + "/".join(globs), "/" + "/".join(segments) + ("/" if trailing_slash else "")
    segment = {"*": "[^/]*", "?": "[^/]"}
    expression = "".join("(?:/[^/]*)*" if glob == "**" else "/" + "".join(segment.get(c, c) for c in glob)
                         for glob in globs)
    assert Route(rule, ("s",)).matches("GET", path) is (re.fullmatch(expression, path.rstrip("/")) is not None)


def test_a_long_path_is_matched_in_one_pass():
    """A regular expression with several `.*` takes hours on this; the matcher runs through it once."""
    rule = Route("/**/a/**/b/**/c/*a*a*a*b", ("s",))
    assert not rule.matches("GET", "/a" * 20_000 + "/b" * 20_000 + "/c/" + "a" * 20_000)
    assert rule.matches("GET", "/a" * 20_000 + "/b" * 20_000 + "/c/" + "a" * 20_000 + "b")


def test_a_double_star_inside_a_segment_is_refused_at_load():
    for path in ("/api**", "/a/**b", "/a/b**/c"):
        with pytest.raises(ValueError):
            Route(path, ("s",))


# -- the method -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("method, reason", [
    ("POST", "insufficient_scope"), ("post", "insufficient_scope"), ("pOsT", "insufficient_scope"),
    (" POST", "invalid_request_method"), ("POST ", "invalid_request_method"), ("POST\n", "invalid_request_method"),
    ("PO ST", "invalid_request_method"), ("", "invalid_request_method"), (None, "invalid_request_method"),
    ("PO\x00ST", "invalid_request_method"), ("poſt", "invalid_request_method"), ("ＰＯＳＴ", "invalid_request_method"),
])
def test_a_method_is_a_token_compared_without_case_and_never_trimmed(method, reason):
    assert decide(ORDERS, method, "/api/orders/1").reason == reason


def test_a_get_rule_covers_head_which_servers_route_to_get():
    policy = Policy(routes=(Route("/admin/**", ("admin",), frozenset({"get"})),))
    assert decide(policy, "HEAD", "/admin/users").reason == "insufficient_scope"
    assert decide(policy, "head", "/admin/users").reason == "insufficient_scope"
    assert decide(policy, "POST", "/admin/users").authenticated


def test_a_method_that_is_a_token_but_not_the_rules_skips_it():
    assert decide(ORDERS, "GET", "/api/orders/1").authenticated
    assert decide(ORDERS, "PATCH", "/api/orders/1").authenticated


def test_without_routes_neither_method_nor_path_is_looked_at():
    assert decide(Policy(), " get", "admin\\x").authenticated
    assert decide(Policy(), None, None).authenticated


def test_rules_load_only_in_canonical_form(tmp_path):
    env = {"AUTH_SERVER_URL": "https://as.test", "OAUTH_CLIENT_SECRET": "x"}
    for rule in ({"path": "/admin/../x"}, {"path": "//admin"}, {"path": "/%61dmin/**"}, {"path": "/a\\b"},
                 {"path": "/a", "methods": ["POST "]}, {"path": "/a", "methods": ["P OST"]}):
        with pytest.raises(SettingsError) as error:
            load_settings({**env, "ROUTES": json.dumps([rule])})
        assert error.value.key == "ROUTES"
    loaded = load_settings({**env, "ROUTES": '[{"path": "/a?c/**", "methods": "post get"}]'}).routes
    assert loaded == (Route("/a?c/**", (), frozenset({"POST", "GET"})),)
    assert loaded[0].methods == {"POST", "GET", "HEAD"}


# -- properties: an independent model of how a server may read a path -----------------------------------

def _rfc3986_remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4, step by step on the input buffer (the core works on segments)."""
    out = ""
    while path:
        if path.startswith("../") or path.startswith("./"):
            path = path[path.index("/") + 1:]
        elif path.startswith("/./") or path == "/.":
            path = "/" + path[3:]
        elif path.startswith("/../") or path == "/..":
            path = "/" + path[4:]
            out = out[:out.rfind("/")] if "/" in out else ""
        elif path in (".", ".."):
            path = ""
        else:
            cut = path.find("/", 1)
            cut = len(path) if cut < 0 else cut
            out, path = out + path[:cut], path[cut:]
    return out


READING_STEPS = (
    lambda p: unquote(p, errors="replace"),
    lambda p: re.split(r"[?#]", p, maxsplit=1)[0],  # a server that decodes, then looks for delimiters
    lambda p: p.replace("\\", "/"),
    lambda p: re.split(r"[\x00-\x1f\x7f]", p, maxsplit=1)[0],  # C strings end at NUL; some cut at a control
    lambda p: re.sub(r";[^/]*", "", p),  # path parameters stripped (Tomcat, Jetty)
    lambda p: re.sub(r"[\s\x00-\x1f\x7f\u200b-\u200f\u202a-\u202e\u2060\ufeff]", "", p),
    lambda p: unicodedata.normalize("NFKC", p),
    lambda p: p if p.startswith("/") else "/" + p,
    lambda p: re.sub(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/]*", "", p),  # absolute-form
    lambda p: re.sub("/+", "/", p),
    _rfc3986_remove_dot_segments,
)


def server_readings(uri: str) -> set[str]:
    """Every path some server could route ``uri`` to: each step above is taken or skipped, twice over (so
    in either order), after the query is cut off (every server does that). An over-approximation."""
    readings = {uri.partition("?")[0]}
    for step in READING_STEPS * 2:
        readings |= {step(p) for p in readings}
    return readings


def could_be_admin(uri: str) -> bool:
    return any(p == "/admin" or p.startswith("/admin/") for p in server_readings(uri))


PIECES = ["/", "/", "/", ".", "..", "%", "2", "5", "e", "E", "f", "F", "c", "C", "6", "1", "0", "a", "d", "m",
          "i", "n", "admin", "/admin", "x", "\\", "\n", "\r", "\t", "\x00", "\x7f", " ", ";", "?", "#", "%2e",
          "%2E", "%2f", "%2F", "%5c", "%61", "%25", "%00", "%0a", "%3b", "%3f", "%23", "ａ", "\u200b", "://h",
          "http", "*", "%C0%AF", "%C0%AE"]
SEGMENTS = ["admin", "admin", "x", "", ".", "..", "%2e", "%2E%2e", ".%2e", "%61dmin", "adm%69n", "ａdmin", "admin;x",
            "admin\\x", "admin%2fx", "admin%5Cx", "admin%252fx", "admin\n", "admin%00", "admin ", "*", "\u2025"]
URIS = st.one_of(
    st.lists(st.sampled_from(PIECES), max_size=12).map("".join),  # character soup
    st.tuples(st.sampled_from(["/", "/", "", "//", "http://h/"]), st.lists(st.sampled_from(SEGMENTS), max_size=6),
              st.sampled_from(["", "", "/", "?x", "?/../admin", "#/../admin"]))
    .map(lambda parts: parts[0] + "/".join(parts[1]) + parts[2]),  # whole segments
)
ISSUE_SPELLINGS = ["/api/../admin/users", "/./admin/users", "//admin/users", "/%61dmin/users", "/admin%2Fusers",
                   "admin/users", "/admin\\users", "/admin", "/admin\n/users", "/admin%252Fusers",
                   "/admin;x/users", "http://h/admin/users", "/x#/../admin", "/admin/../x", "/ａdmin"]


def _examples(test):
    for uri in ISSUE_SPELLINGS:
        test = example(uri)(test)
    return test


@settings(max_examples=1000, deadline=None)
@given(URIS)
@_examples
def test_no_reading_of_a_path_reaches_admin_without_the_scope(uri):
    verdict = decide(ADMIN, "GET", uri)
    if could_be_admin(uri):
        assert not verdict.authenticated
        assert verdict.reason in ("insufficient_scope", "invalid_request_path")


@settings(max_examples=300, deadline=None)
@given(URIS)
@_examples
def test_nor_through_a_plugin_request_in_either_dialect(uri):
    for body in ({"method": "GET", "uri": uri, "query_params": {"access_token": "tok"}},
                 {"context": {"method": "GET", "uri": uri}, "credentials": {"type": "bearer", "token": "tok"}}):
        request = core.parse_plugin_request(body, 4096, ADMIN)
        if request.token is None:  # refused before any call out
            assert request.problem == "invalid_request_path" and core.route_paths(uri) is None
            continue
        verdict = core.decide(READ_WRITE, NOW, 0, ADMIN, request.method, request.path)
        assert not (verdict.authenticated and could_be_admin(uri))


SEGMENT = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_~.", min_size=1, max_size=6).filter(
    lambda s: s not in (".", ".."))


@settings(max_examples=300, deadline=None)
@given(st.lists(SEGMENT, min_size=1, max_size=5), st.booleans(), st.text(alphabet="a=&/.%?", max_size=8))
def test_a_plain_path_outside_the_rule_stays_authenticated(segments, trailing_slash, query):
    uri = "/" + "/".join(segments) + ("/" if trailing_slash else "") + ("?" + query if query else "")
    verdict = decide(ADMIN, "GET", uri)
    assert verdict.authenticated is (segments[0] != "admin")


METHOD_PIECES = ["POST", "post", "Post", "P", "O", "S", "T", "p", "o", "s", "t", " ", "\t", "\n", "\r", "\x00",
                 "\x0b", "ſ", "ı", "Ｐ", "\u200b", "GET", "-", "."]


def could_be_post(method: str) -> bool:
    readings = {method, method.strip(), re.sub(r"[\s\x00-\x1f\u200b]", "", method)}
    readings |= {unicodedata.normalize("NFKC", m) for m in readings}
    return any(m.upper() == "POST" for m in readings)


@settings(max_examples=800, deadline=None)
@given(st.lists(st.sampled_from(METHOD_PIECES), max_size=6).map("".join))
@example(" POST")
@example("POST ")
@example("post")
def test_no_spelling_of_post_skips_a_post_only_rule(method):
    verdict = decide(ORDERS, method, "/api/orders/1")
    if could_be_post(method):
        assert not verdict.authenticated


# -- over HTTP, both dialects, both app kinds, oidc-provider -------------------------------------------

ROUTES = json.dumps([{"path": "/admin/**", "scopes": ["admin"]},
                     {"path": "/api/orders/*", "methods": ["POST"], "scopes": ["orders:write"]}])


def host(token: str, method: str, uri: str) -> dict:
    return {"context": {"plugin_id": "auth-python-oauth", "custom": {"token": token}}, "method": method, "uri": uri,
            "query_params": {}}


def sdk(token: str, method: str, uri: str) -> dict:
    return {"context": {"method": method, "uri": uri}, "credentials": {"type": "bearer", "token": token}}


def outcome(client, dialect: str, token: str, method: str, uri: str) -> tuple[bool, str | None]:
    """(authenticated, reason) of one plugin request in one dialect."""
    answer = client.simulate_post("/plugin/authenticate", json=(host if dialect == "host" else sdk)(token, method, uri))
    assert answer.status_code == 200
    if dialect == "host":
        return answer.json["authenticated"], answer.json["error_message"]
    result = answer.json["result"]
    return result["authenticated"], result["claims"].get("error")


ISSUE_CASES = [
    ("GET", "/api/../admin/users", "insufficient_scope"), ("GET", "/./admin/users", "insufficient_scope"),
    ("GET", "//admin/users", "insufficient_scope"), ("GET", "/%61dmin/users", "insufficient_scope"),
    ("GET", "/admin%2Fusers", "invalid_request_path"), ("GET", "admin/users", "invalid_request_path"),
    ("GET", "/admin\\users", "invalid_request_path"), ("GET", "/admin", "insufficient_scope"),
    ("GET", "/admin/", "insufficient_scope"), ("GET", "/admin\n/users", "invalid_request_path"),
    ("GET", "/admin/users\n", "invalid_request_path"), ("GET", "/admin\t/users", "invalid_request_path"),
    ("GET", "/admin%00/users", "invalid_request_path"), ("GET", "/admin%252Fusers", "invalid_request_path"),
    ("GET", "/admin;jsid=1/users", "invalid_request_path"), ("GET", "http://h/admin/users", "invalid_request_path"),
    ("GET", "*", "invalid_request_path"), ("GET", "/ａdmin/users", "invalid_request_path"),
    ("GET", "/x#/../admin", "invalid_request_path"), ("GET", "/admin/../x", "insufficient_scope"),
    ("GET", "/admin?x=1", "insufficient_scope"), ("GET", "", "invalid_request_path"),
    ("POST", "/api/orders/1", "insufficient_scope"), ("post", "/api/orders/1", "insufficient_scope"),
    (" POST", "/api/orders/1", "invalid_request_method"), ("POST ", "/api/orders/1", "invalid_request_method"),
    ("POST\r\n", "/api/orders/1", "invalid_request_method"), ("", "/api/orders/1", "invalid_request_method"),
]


@pytest.fixture()
def routed(authserver, make_client):
    return make_client(authserver.settings(ROUTES=ROUTES))


@pytest.mark.parametrize("dialect", ["host", "sdk"])
def test_every_spelling_of_the_issue_is_refused(authserver, routed, dialect):
    token = authserver.token("read write")
    for method, uri, reason in ISSUE_CASES:
        assert outcome(routed, dialect, token, method, uri) == (False, reason), (method, uri)
    assert outcome(routed, dialect, token, "GET", "/api/users") == (True, None)
    assert outcome(routed, dialect, token, "GET", "/api/orders/1") == (True, None)


@pytest.mark.parametrize("dialect", ["host", "sdk"])
def test_a_canonical_spelling_is_matched_not_refused(authserver, routed, dialect):
    admin, writer = authserver.token("admin"), authserver.token("orders:write")
    for uri in ("/%61dmin/users", "//admin/users", "/api/../admin/users", "/admin", "/admin/users?x=1"):
        assert outcome(routed, dialect, admin, "GET", uri) == (True, None), uri
    assert outcome(routed, dialect, writer, "post", "/api/orders/%31") == (True, None)


def test_a_refused_path_costs_no_call_and_is_never_the_tokens_verdict(standin, make_client):
    client = make_client(load_settings(standin.environ(ROUTES=ROUTES)))
    for dialect in ("host", "sdk"):
        token = f"good-{dialect}"
        assert outcome(client, dialect, token, "GET", "/admin%2Fusers") == (False, "invalid_request_path")
        assert outcome(client, dialect, token, " GET", "/api/x") == (False, "invalid_request_method")
        assert standin.calls[token] == 0
        assert outcome(client, dialect, token, "GET", "/api/x") == (True, None)
        assert outcome(client, dialect, token, "GET", "/admin%2Fusers") == (False, "invalid_request_path")
        assert outcome(client, dialect, token, "GET", "/api/y") == (True, None)
        assert standin.calls[token] == 1
