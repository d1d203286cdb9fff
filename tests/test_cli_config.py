"""`pygateway config check|show FILE`, run as users run it: a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pygateway._config import load

FIXTURES = Path(__file__).parent / "fixtures"


def pygateway(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pygateway", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("name", ["kong.yaml", "kong-export.json"])
def test_check_accepts_a_valid_file(name: str) -> None:
    path = FIXTURES / name
    result = pygateway("config", "check", path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{path}: configuration is valid"
    assert result.stderr == ""


def test_check_rejects_an_invalid_file_naming_every_path_and_reason() -> None:
    path = FIXTURES / "invalid.yaml"
    result = pygateway("config", "check", path)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0] == f"pygateway: {path} is invalid:"
    assert [line.strip() for line in lines[1:]] == [
        "services[0].routes[1].methods[0]: invalid value: get",
        "services[0].routes[1].paths[0]: non-normalized path, consider use '/admin' instead",
        "services[1].retries: expected an integer",
        "consumers[0]: at least one of these fields must be non-empty: 'custom_id', 'username'",
        "upstreams[0].name: Invalid name; no ip addresses allowed",
        "upstreams[1].targets[0].target: invalid port number: 70000",
        "plugins[0].name: plugin 'not-a-plugin' not enabled; add it to the 'plugins' "
        "configuration property",
        "plugins[1].config.status_code: expected an integer",
    ]


def test_check_rejects_references_to_missing_entities() -> None:
    result = pygateway("config", "check", FIXTURES / "dangling-references.json")
    assert result.returncode == 1
    assert (
        "routes[0].service: the foreign key 'no-such-service' does not reference an existing "
        "'services' entity" in result.stderr
    )
    assert (
        "plugins[0].consumer: the foreign key 'nobody' does not reference an existing "
        "'consumers' entity" in result.stderr
    )


def test_check_rejects_a_missing_file(tmp_path: Path) -> None:
    result = pygateway("config", "check", tmp_path / "missing.yaml")
    assert result.returncode == 1
    assert "cannot read" in result.stderr
    assert "missing.yaml" in result.stderr


def test_check_rejects_a_file_that_does_not_parse(tmp_path: Path) -> None:
    path = tmp_path / "kong.json"
    path.write_text("{not json")
    result = pygateway("config", "check", path)
    assert result.returncode == 1
    assert "invalid JSON" in result.stderr


def test_check_rejects_a_file_without_a_format_version(tmp_path: Path) -> None:
    path = tmp_path / "kong.yaml"
    path.write_text("services: []\n")
    result = pygateway("config", "check", path)
    assert result.returncode == 1
    assert "_format_version: required field missing" in result.stderr


def test_show_prints_the_configuration_as_understood() -> None:
    path = FIXTURES / "kong-export.json"
    result = pygateway("config", "show", path)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["_format_version"] == "3.0"
    # the flat export comes back in nested form, with defaults filled in
    [consumer] = shown["consumers"]
    assert [c["key"] for c in consumer["keyauth_credentials"]] == ["carol-secret-key"]
    assert shown["services"][0]["retries"] == 5
    assert load(shown) == load(path)


def test_show_refuses_an_invalid_file() -> None:
    result = pygateway("config", "show", FIXTURES / "invalid.yaml")
    assert result.returncode == 1
    assert result.stdout == ""
    assert "services[1].retries: expected an integer" in result.stderr


def test_config_needs_a_subcommand() -> None:
    result = pygateway("config")
    assert result.returncode == 2
    assert "usage:" in result.stderr
