"""The Grafana dashboard in deploy/grafana: every query parses as PromQL, and every metric, label and label
value it names is one the plugin really exports, read from /metrics of the app (both kinds) after traffic
that makes every series appear."""

from __future__ import annotations

import json
import re

import promql_parser
import pytest
from prometheus_client.parser import text_string_to_metric_families

from falcon_oauth.discovery import discover_at_start
from tests.conftest import APP_CLIENT, ROOT, free_port

DASHBOARD = json.loads((ROOT / "deploy" / "grafana" / "falcon-oauth.json").read_text())
TARGET_LABELS = {"job", "instance"}  # added by Prometheus to every series it scrapes
GRAFANA_DURATIONS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def every_panel(panels: list[dict]) -> list[dict]:
    return [p for panel in panels for p in [panel, *every_panel(panel.get("panels", []))]]


def queries() -> list[str]:
    return [target["expr"] for panel in every_panel(DASHBOARD["panels"]) for target in panel.get("targets", [])]


class Uses:
    """What one query asks of the metrics: selectors (name and matchers) and grouping labels, with the metric
    names each grouping covers."""

    def __init__(self, expr: str) -> None:
        for variable, duration in GRAFANA_DURATIONS.items():
            expr = expr.replace(f"[{variable}]", f"[{duration}]")
        self.selectors: list[tuple[str, list[tuple[str, promql_parser.MatchOp, str]]]] = []
        self.groupings: list[tuple[list[str], set[str]]] = []
        self._walk(promql_parser.parse(expr))

    def _walk(self, node: object) -> set[str]:
        """Records what ``node`` uses; returns the metric names under it."""
        if isinstance(node, promql_parser.MatrixSelector):
            return self._walk(node.vector_selector)
        if isinstance(node, promql_parser.VectorSelector):
            matchers = [(m.name, m.op, m.value) for m in node.matchers.matchers if m.name != "__name__"]
            assert node.name, f"a selector without a metric name: {node}"
            self.selectors.append((node.name, matchers))
            return {node.name}
        if isinstance(node, promql_parser.AggregateExpr):
            names = self._walk(node.expr)
            if node.modifier is not None:
                self.groupings.append((list(node.modifier.labels), names))
            return names
        if isinstance(node, promql_parser.BinaryExpr):
            return self._walk(node.lhs) | self._walk(node.rhs)
        if isinstance(node, promql_parser.Call):
            return set().union(*(self._walk(arg) for arg in node.args))
        if isinstance(node, promql_parser.ParenExpr | promql_parser.UnaryExpr | promql_parser.SubqueryExpr):
            return self._walk(node.expr)
        assert isinstance(node, promql_parser.NumberLiteral | promql_parser.StringLiteral), type(node)
        return set()


def test_the_dashboard_is_laid_out_as_grafana_expects():
    panels = every_panel(DASHBOARD["panels"])
    assert len({p["id"] for p in panels}) == len(panels)
    cells = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24
        columns, rows = range(grid["x"], grid["x"] + grid["w"]), range(grid["y"], grid["y"] + grid["h"])
        area = {(x, y) for x in columns for y in rows}
        assert not area & cells, f"panel {panel['title']!r} overlaps another"
        cells |= area
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"} and panel["targets"]
            assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
    variables = {v["name"] for v in DASHBOARD["templating"]["list"]}
    for expr in queries():
        assert set(re.findall(r"\$(\w+)", expr)) <= variables | {v[1:] for v in GRAFANA_DURATIONS}


def test_every_query_is_promql():
    for expr in queries():
        assert Uses(expr).selectors, expr
    with pytest.raises(ValueError):
        Uses("sum(rate(falcon_oauth_auth_requests_total[5m])")  # the parser does refuse


@pytest.fixture()
def exported(authserver, make_client) -> dict[str, dict[str, set[str]]]:
    """Sample name → label name → values seen, in /metrics after authenticated, rejected and undecided
    answers, cache hits and misses, in the app kind under test."""
    client = make_client(authserver.settings())
    revoked = authserver.token()
    authserver.revoke(revoked)
    for token in (authserver.token(), authserver.token(), revoked):
        for _ in range(2):  # a miss, then a hit
            client.simulate_post("/plugin/authenticate", json={"credentials": {"type": "bearer", "token": token}})
    jwts = make_client(discover_at_start(authserver.settings(JWT_VALIDATION="true", OIDC_DISCOVERY="true",
                                                             AUDIENCES="https://jwt.example.test")))
    issued = authserver.http.post("/token", data={"grant_type": "client_credentials", "scope": "read",
                                                  "resource": "https://jwt.example.test"}, auth=APP_CLIENT)
    assert jwts.simulate_post("/plugin/authenticate", json={"credentials": {
        "type": "bearer", "token": issued.json()["access_token"]}}).json["result"]["authenticated"]
    down = make_client(authserver.settings(AUTH_SERVER_URL=f"http://127.0.0.1:{free_port()}", AUTH_SERVER_RETRIES="0"))
    answer = down.simulate_post("/plugin/authenticate", json={"credentials": {"type": "bearer", "token": "t-down"}})
    assert answer.status_code == 503
    text = client.simulate_get("/metrics").text
    samples: dict[str, dict[str, set[str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = samples.setdefault(sample.name, {})
            for name, value in sample.labels.items():
                labels.setdefault(name, set()).add(value)
    return samples


def test_every_metric_label_and_value_the_dashboard_asks_for_is_exported(exported):
    variable = DASHBOARD["templating"]["list"][1]["query"]["query"]
    (metric,) = re.fullmatch(r"label_values\((\w+), job\)", variable).groups()
    assert metric in exported
    for expr in queries():
        uses = Uses(expr)
        for name, matchers in uses.selectors:
            assert name in exported, f"{name} is not exported (query: {expr})"
            for label, op, value in matchers:
                if label in TARGET_LABELS:
                    continue
                assert label in exported[name], f"{name} has no label {label}"
                if op == promql_parser.MatchOp.Equal:
                    assert value in exported[name][label], f"{name} never has {label}={value!r}"
        for labels, names in uses.groupings:
            for label in labels:
                assert label in TARGET_LABELS or any(label in exported[name] for name in names), (label, expr)


def test_the_check_above_would_see_a_wrong_name(exported):
    """The names differ from the metric objects' by their suffixes: a query on the family name finds nothing."""
    assert not {"falcon_oauth_auth_requests", "falcon_oauth_introspection_duration_seconds"} & set(exported)
    assert {"falcon_oauth_introspection_duration_seconds_bucket", "falcon_oauth_auth_requests_total"} <= set(exported)
    assert "le" in exported["falcon_oauth_introspection_duration_seconds_bucket"]


def family(sample: str) -> str:
    return re.sub(r"_(total|bucket|count|sum|created)$", "", sample)


def test_every_metric_of_the_plugin_is_on_the_dashboard(exported):
    """A metric the plugin exports and the dashboard leaves out (as the sealed-value rejections once were) is
    one nobody looks at."""
    shown = {family(name) for expr in queries() for name, _ in Uses(expr).selectors}
    plugin = {family(name) for name in exported if name.startswith("falcon_oauth_")}
    assert "falcon_oauth_cache_rejected_values" in plugin
    assert plugin - shown == set(), "exported but on no panel"
