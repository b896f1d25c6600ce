"""Gateway settings: invalid combinations are refused at start-up, naming the values."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from common.errors import UserError
from serving.config import ApiKey, GatewaySettings, api_key_digest
from serving.routing import AdapterRouter, Route
from streams.events import AdapterRef


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"auth": True}, "auth=true needs api_keys or api_keys_file"),
        ({"signing_key": "changeme"}, "not a placeholder"),
        ({"admin_key": "short"}, "admin_key must be a random secret of at least"),
        ({"signing_key": "short-but-random"}, "at least 32 characters"),
        ({"engine_urls": ["localhost:8001"]}, r"http\(s\) URLs, got \['localhost:8001'\]"),
        ({"max_n": 0}, "greater than or equal to 1"),
        ({"workers": 0}, r"workers\n  Input should be greater than or equal to 1"),
    ],
)
def test_bad_settings_are_refused_with_the_values(settings: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        GatewaySettings(**settings)


def test_secrets_never_show_in_the_settings_repr() -> None:
    settings = GatewaySettings(
        auth=True, api_keys={"sk-very-secret": {"user": "ann"}}, signing_key="s" * 40
    )
    assert "sk-very-secret" not in repr(settings) and "s" * 40 not in repr(settings)
    assert settings.key_table()[api_key_digest("sk-very-secret")].user == "ann"


def test_api_keys_come_from_the_environment_or_a_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HHH_GATEWAY_AUTH", "true")
    monkeypatch.setenv("HHH_GATEWAY_API_KEYS", '{"sk-1": {"user": "bo", "roles": ["labeler"]}}')
    assert GatewaySettings().key_table()[api_key_digest("sk-1")].roles == {"labeler"}

    monkeypatch.delenv("HHH_GATEWAY_API_KEYS")
    keys = tmp_path / "keys.json"
    keys.write_text('{"sk-2": {"user": "cy"}}')
    monkeypatch.setenv("HHH_GATEWAY_API_KEYS_FILE", str(keys))
    assert GatewaySettings().key_table()[api_key_digest("sk-2")].user == "cy"


def test_the_generated_signing_key_is_kept_for_restarts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HHH_HOME", str(tmp_path))
    first = GatewaySettings().signing_secret()
    assert GatewaySettings().signing_secret() == first and len(first) == 64
    assert (tmp_path / "signing.key").stat().st_mode & 0o077 == 0


def test_routing_prefers_the_callers_adapter_then_global_then_base() -> None:
    router = AdapterRouter()
    assert router.route("ann", "demo").adapter.scope == "base"
    router.set_live(Route("global-v1", AdapterRef(scope="global", version=1)))
    assert router.route("ann", "demo").engine_model == "global-v1"
    router.set_live(Route("ann-v3", AdapterRef(scope="user:ann", version=3)))
    assert router.route("ann", "demo").engine_model == "ann-v3"
    assert router.route("bob", "demo").engine_model == "global-v1"
    replaced = router.set_live(Route("global-v2", AdapterRef(scope="global", version=2)))
    assert replaced is not None and replaced.engine_model == "global-v1"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "gateway.example.com"])
def test_auth_off_on_a_public_address_is_refused_unless_explicitly_allowed(host: str) -> None:
    with pytest.raises(ValidationError, match=f"auth is off but host='{host}' is not a loopback address.*"
                       "HHH_GATEWAY_ALLOW_UNAUTHENTICATED_PUBLIC=true"):
        GatewaySettings(host=host)
    assert GatewaySettings(host=host, auth=True, api_keys={"sk-a": {"user": "ann"}}).auth
    assert GatewaySettings(host=host, allow_unauthenticated_public=True).public_without_auth


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_auth_off_on_a_loopback_address_is_the_local_default(host: str) -> None:
    assert not GatewaySettings(host=host).public_without_auth


def test_allowing_auth_off_in_public_is_logged_as_unsafe(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from serving.app import build_gateway
    from streams.outbox import Outbox, OutboxDrainer
    from streams.sqlite_log import SqliteEventLog

    settings = GatewaySettings(host="0.0.0.0", allow_unauthenticated_public=True, signing_key="s" * 40,
                               engine_urls=["http://127.0.0.1:9"])
    outbox = Outbox(tmp_path / "outbox.db")
    with caplog.at_level("WARNING", logger="serving.app"):
        build_gateway(settings, outbox, OutboxDrainer(outbox, lambda: SqliteEventLog(tmp_path / "events.db")))
    outbox.close()
    assert "UNSAFE: auth is off on 0.0.0.0" in caplog.text


PLANTED = "sk-live-PLANTED-7f3a9c"


@pytest.mark.parametrize(
    ("environment", "problem"),
    [
        ({"HHH_GATEWAY_API_KEYS": json.dumps({PLANTED: {"user": ".."}})}, "api_keys entry 1 (user '..'): user: user id"),
        ({"HHH_GATEWAY_API_KEYS": json.dumps({"sk-ok-1": {"user": "ann"}, PLANTED: {"user": "bo", "roles": ["boss"]}})},
         "api_keys entry 2 (user 'bo'): roles.0: Input should be 'labeler' or 'admin'"),
        ({"HHH_GATEWAY_API_KEYS": json.dumps({PLANTED: "ann"})}, "api_keys entry 1: owner: Input should be a valid dictionary"),
        ({"HHH_GATEWAY_API_KEYS": json.dumps({PLANTED: {"user": "ann"}}), "HHH_GATEWAY_SIGNING_KEY": PLANTED},
         "signing_key must be a random secret of at least 32 characters"),
        ({"HHH_GATEWAY_API_KEYS": json.dumps({PLANTED: {"user": "ann"}}), "HHH_GATEWAY_ADMIN_KEY": PLANTED},
         "admin_key must be a random secret"),
        ({"HHH_GATEWAY_API_KEYS": json.dumps({f"sha256:{PLANTED}": {"user": "ann"}})},
         "a hashed key is 'sha256:' and 64 lowercase hex digits"),
        ({"HHH_GATEWAY_API_KEYS": json.dumps({PLANTED: {"user": "ann", "labeler_ids": ["panel"]}})},
         "labeler_ids ['panel'] need the labeler role"),
    ],
    ids=["bad-user", "bad-role", "not-an-object", "short-signing-key", "short-admin-key", "bad-hash", "labeler-ids"],
)
def test_a_planted_secret_never_shows_in_start_up_errors_or_logs(
    environment: dict[str, str], problem: str, tmp_path: Path
) -> None:
    """`hhh serve` refuses the settings with a message that says what to fix, and names API keys
    by position and user only: not in the error, the log or anything else it prints."""
    completed = subprocess.run(
        [sys.executable, "-c", "from hhh.cli import main; main()", "serve"],
        env={**os.environ, "HHH_HOME": str(tmp_path), "HHH_GATEWAY_AUTH": "true", **environment},
        capture_output=True, text=True, timeout=120,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode != 0 and problem in output, output
    assert PLANTED not in output and PLANTED[8:] not in output
    assert "Traceback" not in output


def test_a_planted_secret_never_shows_in_errors_about_the_keys_file(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({PLANTED: {"user": "ann", "roles": ["root"]}}))
    with pytest.raises(UserError) as refused:
        GatewaySettings(auth=True, api_keys_file=keys).key_table()
    assert f"{keys} entry 1 (user 'ann'): roles.0" in str(refused.value)
    keys.write_text(json.dumps({PLANTED: {"user": "ann"}})[:-3])
    with pytest.raises(UserError, match="is not JSON") as refused:
        GatewaySettings(auth=True, api_keys_file=keys).key_table()
    for shown in (str(refused.value), repr(refused.value), repr(GatewaySettings(api_keys={PLANTED: {"user": "a"}}))):
        assert PLANTED not in shown
    started = subprocess.run(  # `hhh serve` reads the file at start-up, before it starts an engine
        [sys.executable, "-c", "from hhh.cli import main; main()", "serve"],
        env={**os.environ, "HHH_HOME": str(tmp_path), "HHH_GATEWAY_AUTH": "true",
             "HHH_GATEWAY_API_KEYS_FILE": str(keys)},
        capture_output=True, text=True, timeout=120,
    )
    assert started.returncode == 1
    assert started.stderr.strip().startswith(f"hhh serve: api_keys_file {keys} is not JSON: Unterminated")
    assert PLANTED not in started.stdout + started.stderr


def test_api_keys_may_be_given_as_their_sha256() -> None:
    digest = hashlib.sha256(b"sk-hashed-key").hexdigest()
    settings = GatewaySettings(auth=True, api_keys={f"sha256:{digest}": {"user": "ann"}, "sk-plain": {"user": "bo"}})
    assert settings.key_table() == {digest: ApiKey(user="ann"), api_key_digest("sk-plain"): ApiKey(user="bo")}
    with pytest.raises(ValidationError, match="entry 2 .*the same key as another entry"):
        GatewaySettings(auth=True, api_keys={f"sha256:{api_key_digest('sk-x')}": {"user": "a"}, "sk-x": {"user": "b"}})


def test_a_crash_while_generating_the_signing_key_leaves_no_key_behind(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("HHH_HOME", str(home))

    def crash(*_: object) -> None:
        raise OSError("disk full")

    with monkeypatch.context() as patched:
        patched.setattr("serving.config.secrets.token_hex", crash)
        with pytest.raises(OSError):
            GatewaySettings().signing_secret()
    with monkeypatch.context() as patched:
        patched.setattr("common.files.os.fsync", crash)
        with pytest.raises(OSError):
            GatewaySettings().signing_secret()
    assert sorted(p.name for p in home.iterdir()) == []
    key = GatewaySettings().signing_secret()
    assert len(key) == 64 and GatewaySettings().signing_secret() == key
    assert home.stat().st_mode & 0o777 == 0o700 and (home / "signing.key").stat().st_mode & 0o777 == 0o600

    (home / "signing.key").write_text("")  # what a crash of an older version left
    with pytest.raises(UserError, match="signing.key holds 0 characters.*delete it"):
        GatewaySettings().signing_secret()
