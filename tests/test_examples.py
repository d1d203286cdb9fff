"""The examples and the docs' key snippets run, and do what they say they do.

Examples are imported from examples/ and their in-process entry points awaited; each script
also runs as a subprocess, the way a reader would start it. Python blocks in docs/*.md that
are marked `<!-- test: run -->` on the line before the fence (or whose first line is
`# test: run`) are executed in order, one namespace per page.
"""

from __future__ import annotations

import importlib.util
import linecache
import logging
import re
import socket
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import httpx
import pytest

from pygateway.testing import client

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
DOCS = ROOT / "docs"


def load_example(name: str) -> Any:
    """Import examples/<name>.py once per test session (as a real module, for attrs)."""
    module_name = f"_example_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def run_script(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


# -- basic_gateway.py ---------------------------------------------------------------------


async def test_the_basic_gateway_proxies_routes_and_answers_the_rest() -> None:
    results = await load_example("basic_gateway").main()

    assert results == [
        ("GET /echo/hello?x=1", 200, "/v1/hello"),
        ("POST /echo", 200, "hi there"),
        ("GET /users/42", 200, "/v1/users/42"),
        ("GET /legacy", 410, "Gone"),
        ("GET /nowhere", 404, "no Route matched with those values"),
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.servers
def test_the_basic_gateway_script_serves_with_uvicorn(tmp_path: Path) -> None:
    port = _free_port()
    log = tmp_path / "server.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "examples/basic_gateway.py", "--port", str(port)],
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/echo/hi", timeout=5)
                break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(log.read_text()) from None
                time.sleep(0.1)
        assert response.status_code == 200
        assert response.json()["path"] == "/v1/hi"
        assert response.headers["via"].startswith("1.1 pygateway/")
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- load_balancing.py ----------------------------------------------------------------------


@pytest.mark.servers
async def test_the_load_balancing_example_balances_sticks_and_survives_a_dead_target() -> None:
    results = await load_example("load_balancing").main()

    assert results["weighted"] == {"a": 30, "b": 20, "c": 10}
    assert all(len(servers) == 1 for servers in results["sticky"].values())
    down = results["while b is down"]
    assert down["statuses"] == {200: 12}
    assert list(down["health"].values()) == ["HEALTHY", "UNHEALTHY", "HEALTHY"]
    assert results["after b came back"] == {"a": 4, "b": 4, "c": 4}


# -- custom_plugin.py ---------------------------------------------------------------------


async def test_the_custom_plugin_works_the_same_in_code_and_declared(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="examples.tenants")

    results = await load_example("custom_plugin").main()

    expected = [
        (400, "x-tenant header required"),
        (403, "unknown tenant 'initech'"),
        (200, "upstream got x-tenant-id=acme"),
    ]
    assert results == {"in code": expected, "declarative": expected}
    logged = [r.getMessage() for r in caplog.records if r.name == "examples.tenants"]
    assert len(logged) == 6  # the log phase ran for early answers too
    assert logged[2].startswith("tenant=acme route=reports status=200 latency=")


async def test_the_custom_plugin_echoes_the_tenant_in_header_filter() -> None:
    example = load_example("custom_plugin")
    gateway = example.gateway_in_code()
    async with gateway, client(gateway) as http:
        response = await http.get("/reports", headers={"x-tenant": "globex"})

    assert response.headers["x-tenant"] == "globex"


def test_the_custom_plugin_is_registered_under_its_name() -> None:
    import pygateway as gw

    example = load_example("custom_plugin")

    assert gw.plugins.get("require-tenant") is example.RequireTenant


# -- kong.yaml + declarative.py -----------------------------------------------------------


async def test_the_declarative_example_loads_kong_yaml_and_routes_with_it() -> None:
    results = await load_example("declarative").main()

    assert results["orders"] == (200, "/api")
    assert results["order-by-id"] == (200, "/api/orders/7")
    assert results["maintenance"] == (503, "Orders are down for maintenance")
    assert results["catalog targets"] == ["10.0.0.11:8080", "10.0.0.12:8080", "10.0.0.11:8080"]
    assert results["catalog, other host"] == (404, "no Route matched with those values")
    assert results["round trip"] is True
    assert results["errors"] == [
        "services[0].routes[0].paths[0]: should start with: / (fixed path) or ~/ (regex path)",
        "plugins[0].name: plugin 'no-such-plugin' not enabled; "
        "add it to the 'plugins' configuration property",
    ]


def test_pygateway_config_check_accepts_the_example_kong_yaml(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from pygateway._cli import main

    assert main(["config", "check", str(EXAMPLES / "kong.yaml")]) == 0
    assert "configuration is valid" in capsys.readouterr().out


# -- mounted_in_starlette.py --------------------------------------------------------------


async def test_the_gateway_mounted_under_api_and_as_middleware() -> None:
    results = await load_example("mounted_in_starlette").main()

    assert results == {
        "mounted: /health": (200, "ok"),
        "mounted: /api/users/1": (200, "/1"),
        "mounted: X-Forwarded-Prefix": (200, "/api/users"),
        "mounted: /api/nothing": (404, "no Route matched with those values"),
        "middleware: /users/1": (200, "/1"),
        "middleware: /health": (200, "ok"),
        "middleware: /nothing": (404, "Not Found"),
    }


# -- every example as a script ------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["examples/basic_gateway.py", "--requests"], "GET /users/42          -> 200"),
        (["examples/custom_plugin.py"], "tenant=acme route=reports status=200"),
        (["examples/declarative.py"], "round trip: True"),
        (["examples/mounted_in_starlette.py"], "middleware: /nothing"),
        (["examples/load_balancing.py"], "b restarted and found healthy"),
    ],
)
def test_an_example_runs_as_a_script(args: list[str], expected: str) -> None:
    result = run_script(*args)

    assert result.returncode == 0, result.stderr
    assert expected in result.stdout + result.stderr


def test_the_example_test_module_passes_under_pytest() -> None:
    result = run_script(
        "-m",
        "pytest",
        "examples/testing_your_gateway.py",
        "-q",
        "-p",
        "no:cacheprovider",
        timeout=120,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    source = (EXAMPLES / "testing_your_gateway.py").read_text()
    tests = len(re.findall(r"^async def test_", source, re.MULTILINE))
    assert tests >= 5
    # Every test ran twice: on asyncio and on trio.
    assert re.search(rf"\b{2 * tests} passed\b", result.stdout), result.stdout


# -- docs -----------------------------------------------------------------------------------

_FENCE = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def doc_snippets(path: Path) -> list[str]:
    """The Python blocks of a page that are marked to be run."""
    text = path.read_text(encoding="utf-8")
    snippets = []
    for match in _FENCE.finditer(text):
        code = match.group(1)
        before = text[: match.start()].rstrip().rsplit("\n", 1)[-1]
        if before.strip() == "<!-- test: run -->" or code.startswith("# test: run"):
            snippets.append(code)
    return snippets


DOC_PAGES = [page for page in sorted(DOCS.rglob("*.md")) if doc_snippets(page)]


def test_the_docs_have_runnable_snippets() -> None:
    tested = {page.name for page in DOC_PAGES}

    assert {
        "quickstart.md",
        "routing.md",
        "plugins.md",
        "writing-plugins.md",
        "configuration.md",
        "proxying.md",
        "engines.md",
        "embedding.md",
        "testing.md",
    } <= tested


@pytest.mark.parametrize("page", DOC_PAGES, ids=lambda p: p.name)
def test_the_marked_snippets_of_a_doc_page_run(page: Path) -> None:
    snippets = doc_snippets(page)
    name = "_docs_" + page.stem.replace("-", "_")
    module = types.ModuleType(name)  # a real module, so attrs classes resolve their hints
    sys.modules[name] = module
    try:
        for i, code in enumerate(snippets):
            filename = f"{page.name} [snippet {i + 1}]"
            # Let tracebacks show the snippet's lines.
            linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
            compiled = compile(code, filename, "exec")
            exec(compiled, module.__dict__)
    finally:
        del sys.modules[name]


_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors for the headings of a Markdown page."""
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)
    headings = re.findall(r"^#+ (.+)$", text, re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize(
    "page", [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))], ids=lambda p: p.name
)
def test_the_relative_links_of_a_page_resolve(page: Path) -> None:
    for link in _LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"^[a-z]+:", link):
            continue  # an external URL
        target, _, anchor = link.partition("#")
        path = (page.parent / target).resolve() if target else page
        assert path.exists(), f"{page.name}: {link} does not exist"
        if anchor:
            assert anchor in _anchors(path), f"{page.name}: no heading for #{anchor}"
