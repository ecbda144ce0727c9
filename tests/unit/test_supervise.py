"""``notifyd worker --processes N`` (``notifyd.cli.supervise``), with real child processes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from notifyd.cli import main
from notifyd.cli.supervise import Child, ProcessesUnsupported, Supervisor, child_env
from notifyd.config import Settings


def test_each_process_gets_its_port_and_tables_and_all_share_the_credentials(
    tmp_path: Path,
) -> None:
    s = Settings(web_port=6066, datadir=tmp_path)
    envs = [child_env({"NOTIFYD_BROKER_URL": "kafka://b:9092"}, i, s) for i in range(2)]
    assert [e["NOTIFYD_WEB_PORT"] for e in envs] == ["6066", "6067"]
    assert [e["NOTIFYD_DATADIR"] for e in envs] == [
        str(tmp_path / "process-0"), str(tmp_path / "process-1")
    ]
    shared = f"sqlite:///{tmp_path / 'credentials.db'}"
    assert all(e["NOTIFYD_CREDENTIAL_STORE_URL"] == shared for e in envs)
    assert all(e["NOTIFYD_BROKER_URL"] == "kafka://b:9092" for e in envs)
    redis = Settings(datadir=tmp_path, credential_store_url="redis://127.0.0.1:6379/0")
    assert child_env({}, 1, redis)["NOTIFYD_CREDENTIAL_STORE_URL"] == "redis://127.0.0.1:6379/0"


def test_one_canonical_url_cannot_name_several_processes(tmp_path: Path) -> None:
    with pytest.raises(ProcessesUnsupported):
        child_env({}, 0, Settings(datadir=tmp_path, web_canonical_url="http://w1:6066"))
    result = CliRunner().invoke(
        main, ["worker", "--processes", "2"],
        env={"NOTIFYD_WEB_CANONICAL_URL": "http://w1:6066", "NOTIFYD_DATADIR": str(tmp_path)},
    )
    assert result.exit_code == 2 and "NOTIFYD_WEB_CANONICAL_URL" in result.output


def test_a_child_that_dies_is_started_again_after_a_doubling_pause() -> None:
    now = [100.0]
    sup = Supervisor(
        [Child(0, {})], command=[sys.executable, "-c", "raise SystemExit(3)"],
        clock=lambda: now[0],
    )
    child = sup.children[0]
    sup.start(child)
    assert child.proc is not None
    first = child.proc.pid
    child.proc.wait(30)
    sup.step()  # noticed: restart in 1 s
    assert child.restart_at == 101.0 and child.proc.pid == first
    now[0] = 101.0
    sup.step()
    assert child.proc.pid != first  # started again
    child.proc.wait(30)
    sup.step()
    assert child.restart_at == 103.0  # the pause doubled
    assert sup.wait_all() == 3  # the failure's exit code


def test_stop_ends_every_child() -> None:
    sup = Supervisor(
        [Child(i, {}) for i in range(2)],
        command=[sys.executable, "-c", "import time; time.sleep(120)"],
        stop_timeout_s=30,
    )
    for c in sup.children:
        sup.start(c)
    sup.stop()
    assert sup.wait_all() == 0  # ended by SIGTERM, not failed
    assert all(c.proc is not None and c.proc.returncode is not None for c in sup.children)
    sup.step()  # stopping: nothing is restarted
    assert all(c.restart_at is None for c in sup.children)
