"""`pygateway run --admin-port/--store` and `pygateway config export/import`, as a user runs
them: real processes, real sockets, the real `curl` binary for Kong's walkthrough."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pgutil import PG_URL, pg_connect, require_postgres
from serverutil import PYTHON, ServerProcess, echo_upstream, free_port, port_accepts

pytestmark = pytest.mark.servers

MODULE = [PYTHON, "-m", "pygateway"]
CURL = shutil.which("curl")


@pytest.fixture(scope="module")
def upstream() -> Iterator[ServerProcess]:
    with echo_upstream() as server:
        yield server


def curl(*args: str) -> tuple[int, Any]:
    """Run curl; (status, parsed JSON body or the text, or None when empty)."""
    if CURL is None:
        pytest.skip("the curl binary is not installed")
    done = subprocess.run(
        [CURL, "-sS", "-w", "\n%{http_code}", *args], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    body, _, status = done.stdout.rpartition("\n")
    try:
        parsed: Any = json.loads(body) if body else None
    except ValueError:
        parsed = body
    return int(status), parsed


class Gateway:
    """`pygateway run` with an Admin API, on free ports."""

    def __init__(self, *args: str) -> None:
        self.port, self.admin_port = free_port(), free_port()
        argv = [*MODULE, "run", "--port", str(self.port), "--admin-port", str(self.admin_port)]
        self.server = ServerProcess([*argv, *args], self.port)
        self.admin = f"http://127.0.0.1:{self.admin_port}"
        self.proxy = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Gateway:
        self.server.start()
        try:
            deadline = time.monotonic() + 20
            while not port_accepts(self.admin_port):
                assert time.monotonic() < deadline, self.server.output()
                time.sleep(0.05)
        except BaseException:
            self.server.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.close()


def walkthrough(gateway: Gateway, upstream_port: int, *, json_bodies: bool) -> None:
    """Kong's getting-started steps, then traffic through what they configured."""
    a = gateway.admin

    def post(path: str, **fields: Any) -> Any:
        if json_bodies:
            nested: dict[str, Any] = {}
            for key, value in fields.items():
                target = nested
                *parents, last = key.split("__")
                for parent in parents:
                    target = target.setdefault(parent, {})
                target[last] = value
            args = ["-H", "Content-Type: application/json", "-d", json.dumps(nested)]
        else:
            args = []
            for key, value in fields.items():
                name = key.replace("__", ".")
                for item in value if isinstance(value, list) else [value]:
                    args += ["--data", f"{name}{'[]' if isinstance(value, list) else ''}={item}"]
        status, body = curl("-X", "POST", f"{a}{path}", *args)
        assert status == 201, body
        return body

    service = post("/services", name="example-service", url=f"http://127.0.0.1:{upstream_port}/v1")
    assert service["host"] == "127.0.0.1"
    assert service["path"] == "/v1"
    route = post("/services/example-service/routes", name="example-route", paths=["/mock"])
    assert route["service"] == {"id": service["id"]}
    post(
        "/services/example-service/plugins",
        name="rate-limiting",
        config__minute=5,
        config__hour=5,  # a minute boundary during the test does not reset the count
        config__policy="local",
    )
    post("/consumers", username="alice")
    post("/consumers/alice/key-auth", key="top-secret")
    post("/routes/example-route/plugins", name="key-auth")

    status, body = curl(f"{gateway.proxy}/mock/anything")
    assert (status, body["message"]) == (401, "No API key found in request")
    statuses = []
    for _ in range(6):
        status, body = curl("-H", "apikey: top-secret", f"{gateway.proxy}/mock/anything")
        statuses.append(status)
        if status == 200:
            assert body["path"] == "/v1/anything"
            assert body["headers"]["x-consumer-username"] == ["alice"]
    assert statuses == [200] * 5 + [429]


def test_kongs_curl_walkthrough_with_form_bodies_configures_the_running_gateway(
    upstream: ServerProcess,
) -> None:
    with Gateway() as gateway:
        walkthrough(gateway, upstream.port, json_bodies=False)


def test_kongs_curl_walkthrough_with_json_bodies_configures_the_running_gateway(
    upstream: ServerProcess,
) -> None:
    with Gateway() as gateway:
        walkthrough(gateway, upstream.port, json_bodies=True)


def add_echo_route(gateway: Gateway, upstream_port: int, path: str) -> None:
    status, body = curl(
        "-X",
        "PUT",
        f"{gateway.admin}/services/echo",
        "--data",
        f"url=http://127.0.0.1:{upstream_port}",
    )
    assert status == 200, body
    status, body = curl(
        "-X", "POST", f"{gateway.admin}/services/echo/routes", "--data", f"paths[]={path}"
    )
    assert status == 201, body


def test_the_configuration_survives_a_restart_with_sqlite(
    upstream: ServerProcess, tmp_path: Path
) -> None:
    store = f"sqlite:///{tmp_path / 'gateway.db'}"
    with Gateway("--store", store) as gateway:
        add_echo_route(gateway, upstream.port, "/kept")
    with Gateway("--store", store) as gateway:
        status, body = curl(f"{gateway.proxy}/kept/x")
        assert status == 200, body
        status, listed = curl(f"{gateway.admin}/routes")
        assert [r["paths"] for r in listed["data"]] == [["/kept"]]


@pytest.fixture
def pg_store() -> Iterator[str]:
    """A PostgreSQL store URL in a schema of this test's own (dropped afterwards)."""
    require_postgres()
    schema = f"pygw_cli_{uuid.uuid4().hex[:12]}"
    with pg_connect() as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with pg_connect() as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def test_the_configuration_survives_a_restart_with_postgresql(
    upstream: ServerProcess, pg_store: str
) -> None:
    with Gateway("--store", pg_store) as gateway:
        add_echo_route(gateway, upstream.port, "/kept")
    with Gateway("--store", pg_store) as gateway:
        status, body = curl(f"{gateway.proxy}/kept/x")
        assert status == 200, body


def test_every_worker_follows_a_change_made_through_the_admin_api(
    upstream: ServerProcess, tmp_path: Path
) -> None:
    store = f"sqlite:///{tmp_path / 'gateway.db'}"
    with Gateway("--store", store, "--workers", "2") as gateway:
        add_echo_route(gateway, upstream.port, "/first")
        time.sleep(1.5)  # the workers poll the store every second
        # New connections each time: the kernel spreads them over both workers.
        statuses = [curl(f"{gateway.proxy}/first/{i}")[0] for i in range(30)]
        assert statuses == [200] * 30
        add_echo_route(gateway, upstream.port, "/second")
        time.sleep(1.5)
        statuses = [curl(f"{gateway.proxy}/second/{i}")[0] for i in range(30)]
        assert statuses == [200] * 30


def test_config_export_and_import_move_a_configuration_between_stores(
    upstream: ServerProcess, tmp_path: Path
) -> None:
    source = f"sqlite:///{tmp_path / 'a.db'}"
    with Gateway("--store", source) as gateway:
        add_echo_route(gateway, upstream.port, "/moved")
    exported = subprocess.run(
        [*MODULE, "config", "export", "--store", source], capture_output=True, text=True
    )
    assert exported.returncode == 0, exported.stderr
    document = json.loads(exported.stdout)
    assert document["_format_version"] == "3.0"
    path = tmp_path / "kong.json"
    path.write_text(exported.stdout)
    target = f"sqlite:///{tmp_path / 'b.db'}"
    imported = subprocess.run(
        [*MODULE, "config", "import", str(path), "--store", target], capture_output=True, text=True
    )
    assert imported.returncode == 0, imported.stderr
    with Gateway("--store", target) as gateway:
        assert curl(f"{gateway.proxy}/moved/x")[0] == 200


def test_config_import_refuses_an_invalid_file_and_keeps_the_store(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"_format_version": "3.0", "routes": [{"paths": ["x"]}]}))
    store = f"sqlite:///{tmp_path / 'store.db'}"
    done = subprocess.run(
        [*MODULE, "config", "import", str(bad), "--store", store], capture_output=True, text=True
    )
    assert done.returncode == 1
    assert "routes[0].paths[0]" in done.stderr


def run_fails(*args: str) -> str:
    done = subprocess.run(
        [*MODULE, "run", "--port", str(free_port()), *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    return done.stderr


def test_an_unreachable_store_exits_1_naming_it_without_its_password() -> None:
    closed = free_port()
    message = run_fails("--store", f"postgresql://gw:s3cret@127.0.0.1:{closed}/db")
    assert f"127.0.0.1:{closed}" in message
    assert "s3cret" not in message


def test_an_admin_port_in_use_exits_1_with_a_clear_message() -> None:
    with ServerProcess([*MODULE, "demo", "--port", str(port := free_port())], port):
        message = run_fails("--admin-port", str(port))
    assert f"--admin-port {port}: the address is in use" in message


def test_workers_with_an_admin_api_need_a_shared_store() -> None:
    message = run_fails("--workers", "2", "--admin-port", str(free_port()))
    assert "needs a store every worker reads" in message


def test_the_admin_token_is_required_when_set(upstream: ServerProcess) -> None:
    with Gateway("--admin-token", "t0ken") as gateway:
        status, _ = curl(f"{gateway.admin}/services")
        assert status == 401
        status, body = curl("-H", "Kong-Admin-Token: t0ken", f"{gateway.admin}/services")
        assert (status, body["data"]) == (200, [])
