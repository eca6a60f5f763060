"""schemathesis against a real server: every check, a few hundred cases per operation.

No 5xx and no answer outside the OpenAPI description (status, headers, body schema). Seeded,
so a failure reproduces; the longer run is documented in service/README.md.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_service_load import _free_port, _melu, _wait_until_up

HERE = Path(__file__).resolve().parent
CASES_PER_OPERATION = 200


def test_schemathesis_all_checks(small_checkpoint: Path, tmp_path: Path) -> None:
    command = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if command is None:
        pytest.fail("schemathesis is not installed: pip install -e '.[dev]'", pytrace=False)
    # `melu serve` as deployed, in its own process (and so with its own GIL).
    port = _free_port()
    log = tmp_path / "serve.log"
    server = _melu("serve", "--checkpoint", str(small_checkpoint), "--port", str(port), log=log)
    try:
        _wait_until_up(server, port)
        result = subprocess.run(
            [
                command,
                "--config-file",
                str(HERE / "schemathesis.toml"),
                "run",
                f"http://127.0.0.1:{port}/openapi.json",
                "--checks",
                "all",
                "--max-examples",
                str(CASES_PER_OPERATION),
                "--seed",
                "0",
                "--workers",
                "1",
            ],
            cwd=tmp_path,  # its report folder stays out of the repository
            env={**os.environ, "NO_COLOR": "1"},
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        server.terminate()
        server.wait(timeout=60)
    server_log = log.read_text()
    assert "Traceback" not in server_log, server_log[-4000:]
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "passed" in result.stdout
