"""The test suite itself: a missing prerequisite is one line, not a hundred tracebacks; test modules share
helpers through conftest.py, never by importing each other. (That ``unit`` tests start no process is
checked while they run, by tests/conftest.py.)"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import HERE, ROOT


def test_no_test_module_imports_another():
    for path in HERE.glob("test_*.py"):
        assert not re.search(r"^\s*(from tests\.test_|import tests\.test_)", path.read_text(), re.M), path.name


@pytest.mark.integration
@pytest.mark.parametrize("tests, needed", [
    (["tests/test_integration.py"], "Node.js"),
    (["tests/test_cache.py::test_purge_says_so_when_memcached_cannot_be_told"], "memcached"),
])
def test_a_missing_prerequisite_stops_the_session_with_one_line(tmp_path, tests, needed):
    (tmp_path / "python3").symlink_to(sys.executable)  # a PATH with Python and nothing else
    env = {**os.environ, "PATH": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 3, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if "falcon-oauth tests:" in line]
    assert len(lines) == 1 and needed in lines[0] and "pytest -m unit" in lines[0]
    assert "Traceback" not in result.stdout + result.stderr and " ERROR " not in result.stdout
