"""Schema fuzzing: schemathesis sends generated requests, valid and not, to every operation of
`/openapi.json`; none may get a 5xx or a response that breaks the documented schema."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

# What "breaks the schema" means here. positive_data_acceptance is left out on purpose: some
# schema-valid bodies are rightly refused (an empty instruction, a prompt longer than the
# model's context, feedback on an unknown generation), which a JSON schema cannot express.
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "response_headers_conformance",
    ]
)


def test_fuzzing_the_openapi_schema_finds_no_server_error_and_no_schema_break(tiny_server):
    command = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
    result = subprocess.run(
        [
            command,
            "run",
            f"{tiny_server.url}/openapi.json",
            "--checks",
            CHECKS,
            "--max-examples",
            "50",
            "--request-timeout",
            "60",
            "--seed",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    summary = result.stdout[-3000:]
    assert result.returncode == 0, summary
    assert " passed" in summary and "failures" not in summary.split("SUMMARY")[-1], summary
    assert tiny_server.client.get("/ready").status_code == 200
