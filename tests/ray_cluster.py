"""A multi-node Ray cluster on this machine, for tests/test_corpus_cluster.py and bench/bench_corpus.py: a head and
further nodes, each a `ray start --block` process (the venv's `ray` program) leading its own process group, on free
ports, bound to 127.0.0.1, with its own temporary folder, no dashboard, no usage reports and no token
authentication. `stop` terminates, then kills, exactly those process groups (never `ray stop`, which would stop
every Ray on the machine).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

RAY = Path(sys.executable).with_name("ray")
START_TIMEOUT = 90.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class LocalCluster:
    """A head and extra nodes on this machine, each a `ray start --block` process leading its own group."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: list[subprocess.Popen[bytes]] = []
        self.env = {
            **os.environ,
            "RAY_USAGE_STATS_ENABLED": "0",
            # Ray >= 2.5x turns token authentication on for `ray start --head`; a cluster bound to 127.0.0.1 for
            # one test needs none (and must not depend on a token in the user's home).
            "RAY_AUTH_MODE": "disabled",
            # A dead node is noticed in about two seconds, not the default half minute.
            "RAY_health_check_period_ms": "500",
            "RAY_health_check_timeout_ms": "1000",
            "RAY_health_check_failure_threshold": "3",
        }

    def start(self, head: bool, cpus: int = 1) -> subprocess.Popen[bytes]:
        log = self.root / f"node-{len(self.nodes)}.log"
        command = [str(RAY), "start", "--block", "--num-cpus", str(cpus), "--node-ip-address", "127.0.0.1"]
        command += ["--disable-usage-stats"]
        for option in (
            "--node-manager-port",
            "--object-manager-port",
            "--metrics-export-port",
            "--runtime-env-agent-port",
            "--dashboard-agent-listen-port",
            "--dashboard-agent-grpc-port",
        ):
            command += [option, str(free_port())]
        if head:
            command += ["--head", "--port", str(self.port), "--temp-dir", str(self.root / "ray")]
            command += ["--include-dashboard", "false", "--dashboard-port", str(free_port())]
        else:
            command += ["--address", self.address]
        with log.open("wb") as output:
            node = subprocess.Popen(
                command, env=self.env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.nodes.append(node)
        deadline = time.monotonic() + START_TIMEOUT
        while b"Ray runtime started" not in log.read_bytes():
            if node.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start failed: {log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)
        return node

    def alive_cpus(self) -> float:
        """CPUs of the nodes the cluster holds alive, asked from a separate driver process."""
        script = (
            f"import ray; ray.init(address={self.address!r}, log_to_driver=False, configure_logging=False); "
            "print(sum(n['Resources'].get('CPU', 0) for n in ray.nodes() if n['Alive']))"
        )
        done = subprocess.run(
            [sys.executable, "-c", script], env=self.env, capture_output=True, text=True, timeout=START_TIMEOUT
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return float(done.stdout.strip().splitlines()[-1])

    def kill(self, node: subprocess.Popen[bytes]) -> None:
        """SIGKILL a whole node: its raylet, object store, agents and worker processes."""
        with_group(node, signal.SIGKILL)
        node.wait(timeout=30)

    def stop(self) -> None:
        for node in reversed(self.nodes):
            with_group(node, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for node in reversed(self.nodes):
            try:
                node.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        time.sleep(1)  # let the nodes' children exit on their own, then make sure
        for node in self.nodes:
            with_group(node, signal.SIGKILL)
            node.wait()


def with_group(node: subprocess.Popen[bytes], number: signal.Signals) -> None:
    try:
        os.killpg(node.pid, number)
    except ProcessLookupError:
        pass
