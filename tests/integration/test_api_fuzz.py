"""API fuzz: schemathesis generates requests from /api/v1/openapi.json; no 5xx allowed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.harness import Stack

pytestmark = pytest.mark.integration


def test_schemathesis_finds_no_server_errors(stack: Stack, tmp_path: Path) -> None:
    exe = shutil.which("schemathesis") or str(Path(sys.executable).with_name("schemathesis"))
    w = stack.worker
    cmd = [
        exe, "run", f"{w.url}/api/v1/openapi.json",
        "--checks", "not_a_server_error",
        "--max-examples", os.environ.get("NOTIFYD_FUZZ_EXAMPLES", "10"),
        # examples + fuzzing keep CI near 3 minutes; the coverage phase alone takes ~5.
        "--phases", os.environ.get("NOTIFYD_FUZZ_PHASES", "examples,fuzzing"),
        "--header", f"Authorization: Bearer {w.operator_token}",
        # Logging out would revoke the token the rest of the run uses.
        "--exclude-path-regex", "/auth/logout",
        "--request-timeout", "15",
        "--generation-deterministic",
        "--no-color",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                         check=False)
    out = res.stdout + res.stderr
    print(out[-3000:])
    assert res.returncode == 0, out[-6000:]
    assert "Server error" not in out
