"""SECURITY.md, the threat model: its trust boundaries, how to report a problem, and how long a revoked token
can still pass with each cache backend, in agreement with what the purge tests prove (tests/test_purges.py)."""

from __future__ import annotations

import re

from falcon_oauth.settings import CACHE_BACKENDS
from tests.conftest import ROOT

TEXT = (ROOT / "SECURITY.md").read_text()


def revocation_table() -> dict[str, list[str]]:
    section = TEXT.split("## How long a revoked token can still pass", 1)[1]
    rows = re.findall(r"^\| `(\w+)` \|(.+)\|$", section, re.M)
    return {backend: [cell.strip() for cell in cells.split(" | ")] for backend, cells in rows
            if backend != "CACHE_BACKEND"}  # the header row


def test_the_three_trust_boundaries_and_how_to_report():
    headings = re.findall(r"^### (.+)$", TEXT, re.M)
    for boundary in ("MockForge ↔ plugin", "Plugin ↔ authorization server", "Plugin ↔ memcached"):
        assert any(heading.startswith(boundary) for heading in headings), boundary
    report = TEXT.split("## Reporting a problem", 1)[1].split("\n## ", 1)[0]
    assert "private" in report and "never in a public issue" in report


def test_every_backend_says_how_long_a_revoked_token_passes_with_and_without_a_purge():
    table = revocation_table()
    assert set(table) == set(CACHE_BACKENDS)
    assert all(len(cells) == 2 and all(cells) for cells in table.values())
    assert all("`CACHE_TTL`" in table[backend][0] for backend in ("memory", "memcached", "redis"))


def test_a_purge_is_said_to_reach_what_the_purge_tests_prove():
    table = revocation_table()
    # test_a_purge_reaches_every_worker: every request sent after the purge's answer, to any worker
    assert "every worker of the instance before the purge is answered" in table["memory"][1]
    assert "within 1 s in the instance's other workers" not in table["memory"][1]
    # test_a_purge_reaches_every_instance_sharing_memcached: the shared entry is gone at once; and
    # test_l1_keeps_an_entry_at_most_cache_local_ttl: another instance's own tier keeps it that long at most
    for backend in ("memcached", "redis"):
        assert "deleted at once" in table[backend][1]
        assert "for at most `CACHE_LOCAL_TTL` seconds" in table[backend][1]
        assert "within 1 s plus `CACHE_LOCAL_TTL` in every other worker and instance" in table[backend][1]
    assert "may still be stored after it" in TEXT  # a call in flight when the purge came
