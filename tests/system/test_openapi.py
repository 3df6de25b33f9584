"""The contract (proxy/openapi.yaml): served, complete, and fuzzed against a live proxy.

The fuzz runs schemathesis's command line in a subprocess against a real proxy
server on loopback (the ``proxy`` fixture's server, upstream the mock Twitch),
once without credentials (random Authorization values) and once with a real
proxy key on the Helix and status operations. Checks: no server error other
than the documented gateway errors, status codes and response bodies as
documented. The number of cases run goes to the reliability summary.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from proxy.core.limits import RateLimiter
from proxy.web.keys import abuse_guard_key
from proxy.web.routes.openapi import openapi_document
from tests.helpers import login

pytestmark = pytest.mark.timeout(300)

#: Per run: examples per operation and the wall-clock budget (seconds).
MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "25"))
MAX_SECONDS = 35
#: Fixed so that CI is reproducible; FUZZ_SEED=random explores new inputs.
SEED = os.environ.get("FUZZ_SEED", "20261128")

CHECKS = "not_a_server_error,status_code_conformance,response_schema_conformance"
METHODS = ("get", "post", "put", "patch", "delete")


def _schemathesis() -> str:
    path = Path(sys.executable).parent / "schemathesis"
    found = str(path) if path.exists() else shutil.which("schemathesis")
    if found is None:
        pytest.fail("schemathesis is not installed (pip install -e '.[test]')")
    return found


def _served_operations(app) -> set[tuple[str, str]]:
    out = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("formatter") or info.get("path")
        if path is None or route.method in ("HEAD", "OPTIONS") or path.startswith("/static"):
            continue
        out.add((route.method.lower(), re.sub(r"\{(\w+):[^}]*\}", r"{\1}", path)))
    return out


def _documented_operations() -> set[tuple[str, str]]:
    document = openapi_document()
    return {(method, path) for path, item in document["paths"].items()
            for method in METHODS if method in item}


async def test_openapi_json_is_the_yaml_contract(proxy):
    response = await proxy.get("/openapi.json")
    assert response.status == 200
    assert response.content_type == "application/json"
    served = await response.json()
    source = yaml.safe_load((Path(__file__).parents[2] / "proxy" / "openapi.yaml").read_text())
    assert served["openapi"].startswith("3.1")
    assert served["paths"] == source["paths"]
    assert served["components"]["schemas"]["Error"]["required"] == ["error", "message"]


async def test_every_served_operation_is_documented_and_back(proxy):
    served = _served_operations(proxy.app)
    documented = _documented_operations()
    assert served - documented == set(), "routes missing from proxy/openapi.yaml"
    # /metrics is another module's; until it is wired in, it is the one allowed gap.
    assert documented - served <= {("get", "/metrics")}


def _cases_run(output: str) -> int:
    match = re.search(r"Test cases:\s*\n\s*(\d+) generated", output)
    assert match, f"no case count in schemathesis output:\n{output[-3000:]}"
    return int(match.group(1))


async def _fuzz(url: str, workdir: Path, *extra: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        _schemathesis(), "run", url, "--checks", CHECKS,
        "--max-examples", str(MAX_EXAMPLES), "--max-time", str(MAX_SECONDS),
        "--phases", "examples,coverage,fuzzing", "--workers", "2",
        "--request-timeout", "20", "--generation-database", "none",
        *(["--seed", SEED] if SEED != "random" else []), "--no-color", *extra,
        cwd=workdir, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "SCHEMATHESIS_HOOKS": "", "NO_COLOR": "1"},
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), MAX_SECONDS + 60)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    return process.returncode or 0, out.decode(errors="replace")


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_schemathesis_finds_no_unexpected_answer(proxy, mock, tmp_path, caplog,
                                                       reliability):
    """Zero 5xx but 502/503/504, every status and body as documented."""
    url = str(proxy.make_url("/openapi.json"))
    result = await login(proxy)
    key = result["proxy_key"]
    served = _served_operations(proxy.app)
    skip = [f"--exclude-path={path}" for method, path in _documented_operations() - served]

    code, anonymous = await _fuzz(url, tmp_path, *skip)
    assert code == 0, anonymous[-6000:]
    # The anonymous run presented many unknown keys from 127.0.0.1, which is
    # now (rightly) blocked for them; the keyed run stands for another client.
    guard = proxy.app[abuse_guard_key]
    guard.invalid_keys = RateLimiter(guard.limits.invalid_keys_per_minute)
    code, keyed = await _fuzz(
        url, tmp_path, "--include-path-regex", "^/(helix|status)",
        "--exclude-operation-id", "statusPost", "-H", f"Authorization: Bearer {key}")
    assert code == 0, keyed[-6000:]
    cases = _cases_run(anonymous) + _cases_run(keyed)
    reliability.fuzz_cases += cases
    print(f"schemathesis ran {cases} cases")

    secrets = [key, result["access_token"], result["refresh_token"], "mock-client-secret"]
    assert reliability.leaks(secrets, caplog.text) == []
    # The grant survived the fuzzing (the keyed run never revokes).
    status = await proxy.get("/status", headers={"Authorization": f"Bearer {key}"})
    assert status.status == 200
