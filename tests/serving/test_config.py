"""Gateway settings: invalid combinations are refused at start-up, naming the values."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from serving.config import GatewaySettings
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
    assert settings.key_table()["sk-very-secret"].user == "ann"


def test_api_keys_come_from_the_environment_or_a_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HHH_GATEWAY_AUTH", "true")
    monkeypatch.setenv("HHH_GATEWAY_API_KEYS", '{"sk-1": {"user": "bo", "roles": ["labeler"]}}')
    assert GatewaySettings().key_table()["sk-1"].roles == {"labeler"}

    monkeypatch.delenv("HHH_GATEWAY_API_KEYS")
    keys = tmp_path / "keys.json"
    keys.write_text('{"sk-2": {"user": "cy"}}')
    monkeypatch.setenv("HHH_GATEWAY_API_KEYS_FILE", str(keys))
    assert GatewaySettings().key_table()["sk-2"].user == "cy"


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
