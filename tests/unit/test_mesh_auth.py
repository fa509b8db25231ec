"""What the mesh supervisor does about tokens before it starts anything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.auth.keys import JWKS_FILE, ensure_dev_keys
from services.ops.mesh.supervisor import MeshSettings, auth_env, edge_jwt, prepare_keys
from services.server.config import UnsafeSetting


def test_development_keys_are_made_once_and_reused(tmp_path: Path) -> None:
    settings = MeshSettings(tmp_path)
    first = prepare_keys(settings)
    assert first is not None
    assert first.directory == tmp_path / "keys"
    assert prepare_keys(settings) == first


def test_services_are_told_where_the_keys_are(tmp_path: Path) -> None:
    env = auth_env(MeshSettings(tmp_path, keys_dir=tmp_path / "k"))
    assert env["RIDEMESH_AUTH_KEYS_DIR"] == str(tmp_path / "k")
    assert "RIDEMESH_PRODUCTION" not in env


def test_production_refuses_the_development_key(tmp_path: Path) -> None:
    ensure_dev_keys(tmp_path / "keys")
    with pytest.raises(UnsafeSetting, match="development key"):
        prepare_keys(MeshSettings(tmp_path, production=True))


def test_production_closes_reflection_everywhere(tmp_path: Path) -> None:
    settings = MeshSettings(tmp_path, production=True)
    env = auth_env(settings)
    assert (env["RIDEMESH_PRODUCTION"], env["RIDEMESH_OPEN_REFLECTION"]) == ("1", "0")
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / JWKS_FILE).write_text(json.dumps({"keys": []}))
    assert prepare_keys(settings) is None
    assert edge_jwt(settings).open_health_and_reflection is False


def test_envoy_checks_the_services_issuer_and_audience(tmp_path: Path) -> None:
    settings = MeshSettings(tmp_path)
    keys = prepare_keys(settings)
    assert keys is not None
    jwt = edge_jwt(settings)
    assert (jwt.issuer, list(jwt.audiences)) == ("ridemesh-dev", ["ridemesh"])
    assert jwt.jwks == keys.jwks_path.read_text()
    assert jwt.open_health_and_reflection is True
