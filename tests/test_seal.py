"""Key derivation and what a plugin loads for it: HKDF-SHA256 from the standard library's HMAC (RFC 5869's
own test vector, and the same keys as cryptography's HKDF), so that a plugin with the memory cache and no
JWT validation never loads cryptography or joserfc (some 11 MB resident per worker)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from falcon_oauth.cache import KEY_FORMAT
from falcon_oauth.seal import Sealer, derive_key
from tests.conftest import ROOT


def test_rfc_5869_test_case_3_no_salt_no_info():
    okm = "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d"  # its first 32 bytes
    assert derive_key("\x0b" * 22, "").hex() == okm


@pytest.mark.parametrize("secret", ["a-cache-key-secret", "", "ü" * 100, "x" * 1000, "bad-\udcff-bytes"])
@pytest.mark.parametrize("purpose", [f"falcon-oauth {KEY_FORMAT} cache {what}" for what in ("keys", "values")] + [""])
def test_the_same_keys_as_cryptographys_hkdf(secret, purpose):
    expected = HKDF(algorithm=SHA256(), length=32, salt=None, info=purpose.encode()).derive(
        secret.encode("utf-8", "surrogateescape"))
    assert derive_key(secret, purpose) == expected


def test_purposes_and_secrets_give_keys_of_their_own():
    keys = {derive_key(s, p) for s in ("one", "two") for p in ("names", "values")}
    assert len(keys) == 4


def test_a_sealed_value_opens_only_under_its_own_cache_key():
    sealer = Sealer(derive_key("s", "values"))
    sealed = sealer.seal(b"verdict", b"key-1")
    assert sealer.open(sealed, b"key-1") == b"verdict"
    assert sealer.open(sealed, b"key-2") is None
    assert Sealer(derive_key("t", "values")).open(sealed, b"key-1") is None


@pytest.mark.integration  # a process of its own: sys.modules of this one hold everything the tests import
@pytest.mark.parametrize("environ, loaded", [
    ({}, set()),
    ({"CACHE_BACKEND": "memcached"}, {"cryptography"}),  # it seals values
])
def test_cryptography_and_joserfc_load_only_where_they_are_used(environ, loaded):
    code = ("import sys, falcon_oauth.app, falcon_oauth.settings as s\n"
            "falcon_oauth.app.create_app(s.load_settings(), asgi=True)\n"
            "print(' '.join(sorted({m.split('.')[0] for m in sys.modules} & {'cryptography', 'joserfc'})))")
    env = {"AUTH_SERVER_URL": "http://127.0.0.1:9", "OAUTH_CLIENT_SECRET": "s", "PATH": "/usr/bin:/bin", **environ}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) == loaded
