"""A tako-server with no `[server] workers` runs one data-plane process per CPU it may use: the CPUs of its
affinity mask (taskset, a container's cpuset), not the machine's."""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from tests.support.server_process import REPO, TakoServer

pytestmark = pytest.mark.integration


def _data_plane_processes(srv: TakoServer, argv_prefix: list[str]) -> int:
    """Start tako-server (default workers) under `argv_prefix`; processes serving, counted from `hello`."""
    log = open(srv.stderr_path, "ab")  # noqa: SIM115 - handed to the child
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    srv.proc = subprocess.Popen([*argv_prefix, *srv.command()], stdout=log, stderr=log, env=env)
    log.close()
    deadline = time.monotonic() + 60
    while True:
        assert srv.proc.poll() is None, f"tako-server exited:\n{srv.log()}"
        try:
            hello = srv.client().call("hello")
            break
        except OSError:
            assert time.monotonic() < deadline, f"tako-server did not open its socket:\n{srv.log()}"
            time.sleep(0.02)
    return 1 + len(hello.get("workers", []))


def test_default_workers_are_one_per_usable_cpu() -> None:
    srv = TakoServer()
    try:
        assert _data_plane_processes(srv, []) == len(os.sched_getaffinity(0))
    finally:
        srv.cleanup()


def test_default_workers_follow_the_affinity_mask() -> None:
    srv = TakoServer()
    try:
        assert _data_plane_processes(srv, ["taskset", "-c", "0"]) == 1
    finally:
        srv.cleanup()
