"""Property-based fuzzing of the live API against its own OpenAPI document.

`schemathesis run` loads the document the live gunicorn serves and sends every
operation valid and invalid requests (examples, boundary values, wrong types,
unexpected methods and content types, random data up to its default budget, then
stateful sequences that follow the document's links), with the client key. No
response may be a 5xx, and each must be documented: its status, content type, headers,
and a body (every event of a stream) that matches the schema for that status.

The CLI is schemathesis' stable interface; its pytest plugin cannot load a schema
from a fixture on pytest 9.2. A failure prints its reproducer (`curl ...`) and the seed.
"""

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.server.conftest import Server

# No 5xx, and every response as documented: its status, content type, headers and body.
CHECKS = ",".join(
    [
        "not_a_server_error",
        "response_schema_conformance",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
    ]
)


def test_no_input_causes_a_server_error(
    live: Server, auth: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Zero 5xx and zero responses that break the document, on every operation."""
    har = tmp_path / "fuzz.har"
    started = time.monotonic()
    run = subprocess.run(
        [
            *(sys.executable, "-m", "schemathesis.cli", "run", f"{live.url}/api/openapi.json"),
            *("--checks", CHECKS),
            *("--header", f"Authorization: {auth['Authorization']}"),
            *("--request-timeout", "30"),
            # Slow data generation on a busy 2-core machine is no fault of the API.
            *("--suppress-health-check", "too_slow"),
            *("--report", "har", "--report-har-path", str(har)),
        ],
        cwd=tmp_path,  # no schemathesis.toml or .hypothesis/ from the checkout
        capture_output=True,
        text=True,
        timeout=600,
    )
    elapsed = time.monotonic() - started
    entries = json.loads(har.read_text())["log"]["entries"] if har.exists() else []
    statuses = Counter(entry["response"]["status"] for entry in entries)
    summary = ", ".join(f"{status}: {n}" for status, n in sorted(statuses.items()))
    line = f"API fuzzer: {len(entries)} requests in {elapsed:.0f} s ({summary})"
    with capsys.disabled():  # shown even when the test passes
        print(f"\n{line}")

    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-5000:]
    assert len(entries) > 1000, run.stdout[-5000:]  # it really ran
    assert not [status for status in statuses if status >= 500], line
