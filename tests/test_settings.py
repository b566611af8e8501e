"""Configuration: environment, YAML, a MockForge config.yaml, secrets from files, and one-line errors."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys

import pytest
import yaml

from falcon_oauth.settings import Settings, SettingsError, load_settings
from tests.conftest import ROOT

BASE = {"AUTH_SERVER_URL": "https://as.example.test/realm", "OAUTH_CLIENT_SECRET": "s3cret-value"}


def test_defaults_are_the_seeds():
    s = load_settings(BASE)
    assert (s.oauth_client_id, s.host, s.port, s.auth_server_timeout) == ("mockforge", "0.0.0.0", 8080, 5.0)
    assert s.introspection_url == "https://as.example.test/realm/oauth/introspect"
    assert (s.cache_backend, s.cache_ttl, s.cache_negative_ttl, s.cache_max_entries) == ("memory", 300, 10, 10000)
    assert (s.token_max_length, s.clock_skew_seconds, s.max_body_bytes) == (4096, 60, 65536)
    assert s.userinfo_url is None and s.client_auth_method == "client_secret_basic"


def test_endpoints_are_joined_paths_or_full_urls():
    s = load_settings({**BASE, "INTROSPECTION_ENDPOINT": "https://other.test/introspect/",
                       "USERINFO_ENDPOINT": "/me"})
    assert s.introspection_url == "https://other.test/introspect/"
    assert s.userinfo_url == "https://as.example.test/realm/me"


def test_yaml_file_with_the_environment_winning(tmp_path):
    config = tmp_path / "plugin.yaml"
    config.write_text("auth_server_url: https://yaml.test\ncache_ttl: 42\nport: 9000\nuserinfo_required: true\n")
    s = load_settings({"CONFIG_FILE": str(config), "PORT": "9100", "OAUTH_CLIENT_SECRET": "x"})
    assert (s.auth_server_url, s.cache_ttl, s.port, s.userinfo_required) == ("https://yaml.test", 42, 9100, True)


def test_mockforge_config_yaml_plugin_block_with_interpolation(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("""
http: {port: 3000}
plugins:
  - id: other-plugin
    config: {auth_server_url: https://wrong.test}
  - id: auth-python-oauth
    config:
      auth_server_url: ${AS_URL}
      client_id: mockforge-demo
      client_secret: ${AS_SECRET}
      cache_ttl: 120
      introspection_endpoint: /token/introspection
      userinfo_endpoint: ${USERINFO:-/me}
""")
    s = load_settings({"CONFIG_FILE": str(config), "AS_URL": "https://as.test", "AS_SECRET": "from-env"})
    assert (s.auth_server_url, s.oauth_client_id, s.oauth_client_secret) == ("https://as.test", "mockforge-demo",
                                                                             "from-env")
    assert s.cache_ttl == 120 and s.introspection_url == "https://as.test/token/introspection"
    assert s.userinfo_url == "https://as.test/me"


def test_secrets_from_files(tmp_path):
    (tmp_path / "secret").write_text("from-a-file\n")
    (tmp_path / "key").write_text("a-plugin-key-of-16-chars")
    s = load_settings({"AUTH_SERVER_URL": "https://as.test", "OAUTH_CLIENT_SECRET_FILE": str(tmp_path / "secret"),
                       "PLUGIN_API_KEY_FILE": str(tmp_path / "key")})
    assert s.oauth_client_secret == "from-a-file" and s.plugin_api_key == "a-plugin-key-of-16-chars"
    assert "from-a-file" not in repr(s)


@pytest.mark.parametrize("env, key", [
    ({}, "AUTH_SERVER_URL"),
    ({"AUTH_SERVER_URL": "ftp://x"}, "AUTH_SERVER_URL"),
    ({"PORT": "http"}, "PORT"), ({"PORT": "70000"}, "PORT"),
    ({"AUTH_SERVER_TIMEOUT": "-1"}, "AUTH_SERVER_TIMEOUT"),
    ({"CLIENT_AUTH_METHOD": "private_key_jwt"}, "CLIENT_AUTH_METHOD"),
    ({"CACHE_BACKEND": "couchbase"}, "CACHE_BACKEND"),
    ({"CACHE_BACKEND": "memcached", "MEMCACHED_SERVERS": "nohost"}, "MEMCACHED_SERVERS"),
    ({"USERINFO_REQUIRED": "maybe"}, "USERINFO_REQUIRED"),
    ({"PLUGIN_API_KEY": "short"}, "PLUGIN_API_KEY"),
    ({"OAUTH_CLIENT_SECRET": ""}, "OAUTH_CLIENT_SECRET"),
    ({"OAUTH_CLIENT_SECRET_FILE": "/nonexistent"}, "OAUTH_CLIENT_SECRET"),
])
def test_bad_values_name_their_key(env, key):
    environ = {**BASE, **env} if env != {} else {}
    if "OAUTH_CLIENT_SECRET_FILE" in env or env.get("OAUTH_CLIENT_SECRET") == "":
        environ.pop("OAUTH_CLIENT_SECRET", None)
        environ.update(env)
    with pytest.raises(SettingsError) as caught:
        load_settings(environ)
    assert caught.value.key.startswith(key)


@pytest.mark.integration
def test_a_bad_setting_exits_non_zero_with_one_line_and_no_secret():
    env = {"PATH": "/usr/bin:/bin", "AUTH_SERVER_URL": "https://as.test", "OAUTH_CLIENT_SECRET": "very-secret-value",
           "PORT": "not-a-port"}
    result = subprocess.run([sys.executable, "-m", "falcon_oauth"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["falcon-oauth: configuration error: PORT: must be an integer"]
    assert "very-secret-value" not in result.stderr + result.stdout and "Traceback" not in result.stderr


def test_the_example_file_holds_every_setting_with_its_default():
    example = ROOT / "config" / "example.yaml"
    keys = set(yaml.safe_load(example.read_text()))
    assert keys == {f.name for f in dataclasses.fields(Settings)} - {"version", "discovered"}
    loaded = load_settings({"CONFIG_FILE": str(example), "OAUTH_CLIENT_SECRET": "s"})
    assert loaded == Settings(auth_server_url=loaded.auth_server_url, oauth_client_secret="s")


def test_the_mockforge_snippet_gives_mockforge_the_key_the_plugin_requires():
    """Following config/mockforge.yaml, MockForge sends the very key the plugin then requires."""
    snippet = ROOT / "config" / "mockforge.yaml"
    env = {"PLUGIN_API_KEY": "a-plugin-key-of-32-characters-xx", "AUTH_SERVER_URL": "https://as.test",
           "OAUTH_CLIENT_SECRET": "s", "CONFIG_FILE": str(snippet)}
    (plugin,) = yaml.safe_load(snippet.read_text())["plugins"]
    sent = re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), ""), plugin["remote"]["api_key"])
    assert sent and load_settings(env).plugin_api_key == sent
