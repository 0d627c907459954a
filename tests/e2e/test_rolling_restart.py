"""A rolling update on one machine: two replicas behind HAProxy, restarted and reloaded under load.

It stands in for what Kubernetes does to a Deployment: HAProxy health-checks ``/readyz`` (as a
readiness probe does) and retries a request whose connection failed or came back empty or 503
(as a Service's endpoints and a client's retry would). Each replica runs two worker processes.
During bounded loopback load (a few threads, one request at a time each), (a) each replica in
turn gets SIGTERM, exits after draining, and is started again; (b) a new model version is added
and each replica reloaded; (c) one worker of a replica is killed with SIGKILL, and its
replacement answers 503 until its model is warm. Every request the client sent must come back
200; HAProxy's own retry count is printed (those are the only failures allowed, and the client
never sees them).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import free_port, serve_command, wait_workers_ready, worker_pids
from PIL import Image

from model_format import DEFAULT_FILE

pytestmark = pytest.mark.slow
MODEL = "mnist-lenet5"
CLIENTS = 4
WORKERS = 2  # per replica


@dataclass
class Replica:
    """One ``convserve serve`` process on a fixed port, restartable."""

    name: str
    models: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    logs: list[str] = field(default_factory=list)  # the output of each run that has ended
    log: Path = field(init=False)  # the current run's output

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> None:
        env = {**os.environ, "CONVSERVE_PROVIDERS": "CPU", "CONVSERVE_GRACEFUL_SHUTDOWN_S": "20",
               "CONVSERVE_WORKERS": str(WORKERS)}
        # A file, not a pipe: nobody reads a pipe while the test runs, and a full one would
        # block every write to it (the supervisor's among them).
        self.log = self.models.parent / f"{self.name}-{len(self.logs)}.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(serve_command(self.models, self.port), env=env,
                                            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{self.url}/readyz").status_code == 200:
                    wait_workers_ready(self.process.pid, WORKERS)
                    return
            except httpx.TransportError:
                pass
            assert self.process.poll() is None and time.monotonic() < deadline, self.stop()
            time.sleep(0.05)

    def stop(self) -> str:
        """SIGTERM, wait for the drain; returns the output."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        output = self.log.read_text(errors="replace")
        self.logs.append(output)
        return output


class HAProxy:
    """HAProxy in the foreground with a generated config and an admin socket for its stats."""

    def __init__(self, directory: Path, replicas: list[Replica]) -> None:
        binary = shutil.which("haproxy")
        assert binary, "haproxy is missing: apt-get install -y haproxy (Debian's package)"
        self.port = free_port()
        self.socket = directory / "haproxy.sock"
        servers = "\n".join(f"    server {r.name} 127.0.0.1:{r.port} check" for r in replicas)
        config = directory / "haproxy.cfg"
        config.write_text(f"""\
global
    maxconn 256
    log stdout format raw local0
    stats socket {self.socket} mode 600 level admin
defaults
    mode http
    log global
    option httplog
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout check 2s
    # A refused connection (a replica stopped) or one closed with no answer (a replica that
    # closed an idle keep-alive connection as it stopped, just as a request went out on it)
    # is tried again on the other replica: classify is idempotent, so replaying it is safe.
    # HAProxy can replay only a request it holds whole: buffer the body before sending it.
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response 503
    option http-buffer-request
listen convserve
    bind 127.0.0.1:{self.port}
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    # a replica's checks share two busy cores: a slow answer is not a dead replica
    default-server inter 200ms fall 3 rise 2
{servers}
""")
        check = subprocess.run([binary, "-c", "-f", str(config)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        self.log = directory / "haproxy.log"
        with self.log.open("w") as log:
            self.process = subprocess.Popen([binary, "-db", "-f", str(config)], stdout=log,
                                            stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not self.socket.exists():
            assert self.process.poll() is None and time.monotonic() < deadline, self.stop()
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stats(self) -> dict[str, dict[str, str]]:
        """``show stat``, by server name (and BACKEND)."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(self.socket))
            sock.sendall(b"show stat\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        rows = csv.DictReader(io.StringIO(data.decode().lstrip("# ")))
        return {row["svname"]: row for row in rows if row["pxname"] == "convserve"}

    def wait_up(self, name: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.stats()[name]["status"] != "UP":
            assert time.monotonic() < deadline, f"HAProxy never saw {name} UP: {self.stats()}"
            time.sleep(0.05)

    def stop(self) -> str:
        """Stop; returns the log lines of requests that were not answered 200 and the alerts."""
        self.process.terminate()
        self.process.wait(30)
        lines = self.log.read_text(errors="replace").splitlines()
        return "\n".join(line for line in lines if " 200 " not in line)


@dataclass
class Load:
    """``CLIENTS`` threads, each sending one request at a time through the balancer."""

    url: str
    body: bytes
    results: list[tuple[float, int, int | str]] = field(default_factory=list)  # sent, status,
    # version (or the transport error)
    stop: threading.Event = field(default_factory=threading.Event)

    def _client(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as http:
            while not self.stop.is_set():
                sent = time.monotonic()
                try:
                    response = http.post(f"/v1/models/{MODEL}/classify",
                                         files={"file": ("digit.png", self.body)})
                except httpx.TransportError as exc:
                    self.results.append((sent, 0, repr(exc)))
                    continue
                version = (response.json()["version"] if response.status_code == 200
                           else response.text[:200])
                self.results.append((sent, response.status_code, version))

    @classmethod
    @contextlib.contextmanager
    def run(cls, url: str, body: bytes) -> Iterator[Load]:
        load = cls(url, body)
        threads = [threading.Thread(target=load._client) for _ in range(CLIENTS)]
        for thread in threads:
            thread.start()
        try:
            yield load
        finally:
            load.stop.set()
            for thread in threads:
                thread.join(60)


def _digit_png() -> bytes:
    image = np.zeros((28, 28), np.uint8)
    image[4:24, 12:16] = 255  # a "1"
    out = io.BytesIO()
    Image.fromarray(image).save(out, "PNG")
    return out.getvalue()


def _add_version(model_dir: Path, version: int) -> None:
    """A copy of the newest version as ``version``, made the default (the shipped model pins
    its version in ``default_version``); the replicas reload when told to."""
    target = model_dir / str(version)
    shutil.copytree(max(model_dir.glob("*/model.json")).parent, target)
    meta = json.loads((target / "model.json").read_text())
    (target / "model.json").write_text(json.dumps({**meta, "version": version}))
    (model_dir / DEFAULT_FILE).write_text(f"{version}\n")


def test_rolling_restart_and_reload_behind_haproxy(shipped_model: Callable[[str], Path],
                                                   tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(shipped_model(MODEL), models / MODEL)
    replicas = [Replica("a", models), Replica("b", models)]
    for replica in replicas:
        replica.start()
    balancer = HAProxy(tmp_path, replicas)
    try:
        for replica in replicas:
            balancer.wait_up(replica.name)
        with Load.run(balancer.url, _digit_png()) as load:
            time.sleep(2)
            for replica in replicas:  # (a) one at a time, as a rolling update does
                output = replica.stop()
                assert "queues drained" in output, output
                replica.start()
                balancer.wait_up(replica.name)
                time.sleep(1)
            _add_version(models / MODEL, 2)  # (b) a new version, reloaded on each replica
            for replica in replicas:
                answer = httpx.post(f"{replica.url}/v1/repository/reload", timeout=60)
                assert answer.status_code == 200 and answer.json()["added"] == [f"{MODEL}/2"]
            reloaded = time.monotonic()
            time.sleep(1)
            first = replicas[0]
            assert first.process is not None
            victim = worker_pids(first.process.pid)[0]
            os.kill(victim, signal.SIGKILL)  # (c) its replacement loads while the other serves
            time.sleep(0.5)
            wait_workers_ready(first.process.pid, WORKERS)
            time.sleep(1)
        stats = balancer.stats()["BACKEND"]
    finally:
        for replica in replicas:
            replica.stop()
        haproxy_log = balancer.stop()
    assert f"worker {victim} died" in replicas[0].logs[-1]
    statuses = [status for _, status, _ in load.results]
    failed = [result for result in load.results if result[1] != 200]
    print(f"\n{len(statuses)} requests through HAProxy, {len(failed)} failed; "  # noqa: T201
          f"HAProxy retried {stats['wretr']} and redispatched {stats['wredis']} transparently")
    assert len(statuses) >= 100, "too little load to mean anything"
    assert not failed, (failed[:10], haproxy_log[-2000:])
    after = {version for sent, _, version in load.results if sent > reloaded}
    assert after == {2}, after  # sent after both reloads answered: the new version only

