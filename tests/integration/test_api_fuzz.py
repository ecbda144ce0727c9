"""API conformance: schemathesis with every check and every phase against a live worker.

schemathesis reads ``/api/v1/openapi.json`` and runs its examples, coverage, fuzzing
and stateful phases with every check (what ``--checks all`` turns on, set in
``schemathesis.toml``, see there why): no 5xx, and every answer as documented
(status, content type, headers, body schema, ``Allow`` of a 405, the events of the SSE
stream), schema-valid requests accepted, schema-invalid ones refused, auth enforced,
links followed.  Three runs, each with its own bearer token:

* a user's (sign-up), for what users call;
* the operator's, for the admin and other users' routes;
* another user's for ``POST /api/v1/auth/logout`` alone: logging out revokes the
  token a run uses, so in the other runs it would turn every later request into a 401.

``schemathesis.toml`` beside this file holds the per-operation settings, each with its
reason.  ``--generation-deterministic`` makes a run reproducible; NOTIFYD_FUZZ_EXAMPLES
raises ``--max-examples`` for a longer local run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from notifyd.tools.broker.kafka import KafkaBroker
from tests.integration.conftest import start_stack
from tests.support.harness import Sinks, Stack, signup

pytestmark = pytest.mark.integration

CONFIG = Path(__file__).with_name("schemathesis.toml")
PHASES = "examples,coverage,fuzzing,stateful"
LOGOUT = "/api/v1/auth/logout"


@dataclass
class Fuzzed:
    stack: Stack
    #: Bearer tokens of two users signed up before any run: the fuzzer's failed logins
    #: soon trip the per-address login throttle (429), so later sign-ins would fail.
    user_token: str
    logout_token: str


@pytest.fixture(scope="module")
def fuzzed(
    kafka: KafkaBroker, sinks: Sinks, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fuzzed]:
    """A worker of its own, with its own credential store (SQLite): the fuzzer signs
    users up, fails logins (the per-address login throttle), re-drives dead letters and
    rewrites preferences, none of which may reach the tests of the shared stack."""
    st = start_stack(kafka.url, kafka.bootstrap, tmp_path_factory.mktemp("fuzz"), "fuzz", sinks)
    try:
        yield Fuzzed(st, signup(st, "fuzz-user")[1], signup(st, "fuzz-logout")[1])
    finally:
        for w in st.workers:
            w.stop()


def schemathesis(stack: Stack, token: str, cwd: Path, *args: str, phases: str = PHASES) -> str:
    """One ``schemathesis run`` against the stack's worker; its output, asserting it
    passed."""
    exe = shutil.which("schemathesis") or str(Path(sys.executable).with_name("schemathesis"))
    cmd = [
        exe, "--config-file", str(CONFIG), "--no-color",
        "run", f"{stack.worker.url}/api/v1/openapi.json",
        # Every check: the config file turns them all on (not --checks all, which would
        # override its per-operation settings).
        "--phases", phases,
        "--max-examples", os.environ.get("NOTIFYD_FUZZ_EXAMPLES", "25"),
        "--header", f"Authorization: Bearer {token}",
        "--request-timeout", "15",
        "--generation-deterministic",
        *args,
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=cwd,
                         check=False, stdin=subprocess.DEVNULL)
    out = res.stdout + res.stderr
    print(out[-4000:])
    failures = out[out.find("=== FAILURES ==="):] if "=== FAILURES ===" in out else out
    assert res.returncode == 0, failures[:12000]
    return out


def test_schemathesis_all_checks_as_a_user(fuzzed: Fuzzed, tmp_path: Path) -> None:
    out = schemathesis(fuzzed.stack, fuzzed.user_token, tmp_path, "--exclude-path", LOGOUT)
    # The token worked: only the operators' routes refused it (403), none answered 401.
    assert "401 Unauthorized (" not in out


def test_schemathesis_all_checks_as_the_operator(fuzzed: Fuzzed, tmp_path: Path) -> None:
    out = schemathesis(fuzzed.stack, fuzzed.stack.operator_token, tmp_path,
                       "--exclude-path", LOGOUT)
    # The operator's run reaches the admin routes (the user's gets 403 there).
    assert "Authentication failed" not in out


def test_schemathesis_logout(fuzzed: Fuzzed, tmp_path: Path) -> None:
    # No stateful phase: no link leads to (or from) logging out.
    schemathesis(fuzzed.stack, fuzzed.logout_token, tmp_path, "--include-path", LOGOUT,
                 phases="examples,coverage,fuzzing")
