"""The bundled file-log plugin, after Kong's spec for it (04-file-log)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from upstreams import wait_until

import pygateway as gw
from pygateway._config import dump, load
from pygateway._exceptions import ConfigurationError
from pygateway.plugins._file_log import FileLog
from pygateway.testing import client, echo_engine


def gateway_with(plugin: FileLog) -> gw.Gateway:
    return gw.Gateway(
        services=[
            gw.Service(
                name="echo",
                url="http://echo.internal",
                routes=[gw.Route(name="r", paths=["/"], plugins=[plugin])],
            )
        ],
        engines={"echo.internal": echo_engine()},
    )


def lines(path: Path) -> list[dict[str, Any]]:
    """The complete lines written so far (like `tail -f`, a line still being written,
    without its newline yet, is not read)."""
    if not path.exists():
        return []
    complete = path.read_text().rpartition("\n")[0]
    return [json.loads(line) for line in complete.splitlines()]


async def test_each_request_appends_one_json_line(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    path.write_text("")  # appended to, not truncated
    gateway = gateway_with(FileLog(path=str(path)))
    async with gateway, client(gateway) as http:
        ids = []
        for i in range(5):
            response = await http.get(f"/{i}", headers={"cookie": "session=secret"})
            assert response.status_code == 200
            ids.append(response.headers["x-pygateway-request-id"])
        await wait_until(lambda: len(lines(path)) == 5)
    entries = lines(path)
    assert [e["request"]["id"] for e in entries] == ids
    assert all(e["request"]["headers"]["cookie"] == "REDACTED" for e in entries)
    assert entries[0]["response"]["status"] == 200


async def test_the_file_is_created_with_mode_0644(tmp_path: Path) -> None:
    path = tmp_path / "new.log"
    gateway = gateway_with(FileLog(path=str(path)))
    async with gateway, client(gateway) as http:
        await http.get("/")
        await wait_until(lambda: len(lines(path)) == 1)
    if os.name == "posix":
        assert (path.stat().st_mode & 0o777) == 0o644 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


async def test_with_reopen_a_rotated_file_is_followed(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    gateway = gateway_with(FileLog(path=str(path), reopen=True))
    async with gateway, client(gateway) as http:
        await http.get("/before")
        await wait_until(lambda: len(lines(path)) == 1)
        path.rename(tmp_path / "access.log.1")
        await http.get("/after")
        await wait_until(lambda: len(lines(path)) == 1)
    assert lines(path)[0]["request"]["uri"] == "/after"
    assert lines(tmp_path / "access.log.1")[0]["request"]["uri"] == "/before"


async def test_an_unwritable_path_does_not_fail_the_request(tmp_path: Path) -> None:
    path = tmp_path / "missing-dir" / "access.log"
    gateway = gateway_with(FileLog(path=str(path)))
    async with gateway, client(gateway) as http:
        response = await http.get("/")
        assert response.status_code == 200
    assert not path.exists()


def test_declarative_config_round_trips() -> None:
    config = {
        "_format_version": "3.0",
        "plugins": [{"name": "file-log", "config": {"path": "/tmp/x.log", "reopen": True}}],
    }
    loaded = load(config)
    assert load(dump(loaded)) == loaded
    assert FileLog.priority == 9


@pytest.mark.parametrize(
    ("config", "path"),
    [
        ({}, ("path",)),
        ({"path": "/tmp/a*b"}, ("path",)),
        ({"path": "/tmp/x", "custom_fields_by_lua": {"a": "return 1"}}, ("custom_fields_by_lua",)),
    ],
)
def test_invalid_config_is_refused_with_the_field_path(
    config: dict[str, Any], path: tuple[str, ...]
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        FileLog.from_config(config)
    assert path in [p for p, _ in caught.value.errors]
