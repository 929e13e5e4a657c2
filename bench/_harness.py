"""Process plumbing for the benchmarks: the mock server, the client run, the output check.

Everything talks to 127.0.0.1 only, every wait is bounded, and only processes started
here are ever signalled (by PID).
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
BATCHPROC = str(VENV_BIN / "batchproc")
HOST = "127.0.0.1"

# A dead loopback proxy: if anything in the client tried to fetch from the internet
# (e.g. tiktoken downloading an encoding), it fails at once instead of leaving the box.
_DEAD_PROXY = "http://127.0.0.1:9"


def free_port() -> int:
    """A TCP port that was free a moment ago (the server binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def client_env() -> dict[str, str]:
    """The environment a user would have on loopback: no API key, no base URL, no proxy."""
    env = dict(os.environ)
    for key in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_ORG_ID"):
        env.pop(key, None)
    for key in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        env[key] = _DEAD_PROXY
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def http_get_json(port: int, path: str, timeout: float = 5.0) -> Any:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return orjson.loads(resp.read())
    finally:
        conn.close()


class MockServer:
    """``batchproc mock-server`` as a subprocess on a free loopback port.

    Args:
        log_path: where the server's stdout/stderr go.
        rpm, tpm: limits (None: unlimited).
        latency_ms: fixed latency of each answer.
        initial_fill: share of the per-minute buckets available at start.
        faults: extra numeric options, e.g. ``{"fail-500": 0.05}``.
        seed: the fault seed.
        options: further command-line options, as given (e.g. ``["--outage-mode", "reset"]``).
    """

    def __init__(
        self,
        log_path: Path,
        *,
        rpm: float | None = None,
        tpm: float | None = None,
        latency_ms: float = 0.0,
        initial_fill: float | None = None,
        faults: dict[str, float] | None = None,
        seed: int | None = None,
        options: Sequence[str] = (),
    ) -> None:
        self.log_path = log_path
        self.port = 0
        self.args: list[str] = ["--latency-ms", f"{latency_ms:g}"]
        if rpm:
            self.args += ["--rpm", f"{rpm:g}"]
        if tpm:
            self.args += ["--tpm", f"{tpm:g}"]
        if initial_fill is not None:
            self.args += ["--initial-fill", f"{initial_fill:g}"]
        for name, value in (faults or {}).items():
            self.args += [f"--{name}", f"{value:g}"]
        if seed is not None:
            self.args += ["--seed", str(seed)]
        self.args += list(options)
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}/v1"

    def start(self, timeout: float = 20.0) -> None:
        """Start the server and wait until its port accepts connections."""
        for _ in range(3):  # another process may grab the free port first
            self.port = free_port()
            self._log = open(self.log_path, "ab")
            cmd = [BATCHPROC, "mock-server", "--port", str(self.port), *self.args]
            self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    with socket.create_connection((HOST, self.port), timeout=0.5):
                        return
                except OSError:
                    time.sleep(0.02)
            self.stop()
        raise RuntimeError(f"mock server did not come up; see {self.log_path}")

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = http_get_json(self.port, "/stats")
        return result

    def stop(self) -> None:
        """SIGTERM the server's PID and wait (SIGKILL the same PID after 10 s)."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> MockServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class FirstRequestWatch:
    """Poll the server's ``/stats`` every 10 ms until it has seen a request.

    Started just before the client; :attr:`seconds` is then the time from the client's
    launch to the first request the server saw (to within the 10 ms poll).
    """

    def __init__(self, port: int, timeout: float = 900.0, interval: float = 0.01) -> None:
        self.port = port
        self.timeout = timeout
        self.interval = interval
        self.t0 = time.monotonic()
        self.seconds: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self, t0: float | None = None) -> None:
        """Start polling; ``t0`` is the moment the client was launched (default: now)."""
        self.t0 = time.monotonic() if t0 is None else t0
        self._thread.start()

    def _run(self) -> None:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=5)
        try:
            while not self._stop.is_set() and time.monotonic() - self.t0 < self.timeout:
                try:
                    conn.request("GET", "/stats")
                    requests = orjson.loads(conn.getresponse().read()).get("requests", 0)
                except (OSError, http.client.HTTPException):
                    conn.close()
                    conn = http.client.HTTPConnection(HOST, self.port, timeout=5)
                    requests = 0
                if requests > 0:
                    self.seconds = time.monotonic() - self.t0
                    return
                self._stop.wait(self.interval)
        finally:
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


@dataclass
class ClientRun:
    """What one client process cost."""

    exit_code: int
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    stderr_tail: str = ""
    time_to_first_request_s: float | None = None


def run_measured(
    cmd: Sequence[str],
    *,
    log_path: Path,
    env: dict[str, str] | None = None,
    watch_port: int | None = None,
    stdout_path: Path | None = None,
    timeout: float = 3600.0,
) -> ClientRun:
    """Run ``cmd`` to the end, measuring wall time, and CPU and peak RSS via ``os.wait4``.

    ``wait4`` returns the rusage of that one child (and its waited-for descendants),
    so neither the bench nor the mock server pollutes the numbers. ``ru_maxrss`` is in
    KiB on Linux. Output goes to ``log_path`` (stdout to ``stdout_path`` if given).
    """
    watch = FirstRequestWatch(watch_port) if watch_port is not None else None
    with open(log_path, "wb") as log, open(stdout_path or os.devnull, "wb") as out:
        t0 = time.monotonic()
        proc = subprocess.Popen(list(cmd), stdout=out if stdout_path else log, stderr=log,
                                stdin=subprocess.DEVNULL, env=env)
        if watch is not None:
            watch.start(t0)
        # Block in wait4 (no polling to steal CPU from the client); a timer kills
        # this one PID if it runs past the timeout.
        killer = threading.Timer(timeout, proc.kill)
        killer.daemon = True
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
        wall = time.monotonic() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
    if watch is not None:
        watch.stop()
    tail = log_path.read_bytes()[-2000:].decode("utf-8", "replace")
    return ClientRun(
        exit_code=proc.returncode,
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
        peak_rss_mb=usage.ru_maxrss / 1024.0,
        stderr_tail=tail,
        time_to_first_request_s=watch.seconds if watch is not None else None,
    )


@dataclass
class OutputCheck:
    """What the results and errors files hold, against the input's ids."""

    n_results: int = 0
    n_errors: int = 0
    n_missing: int = 0
    n_duplicates: int = 0
    n_unexpected: int = 0
    n_invalid_json: int = 0
    error_codes: dict[str, int] = field(default_factory=dict)


def count_ids(path: Path, id_prefix: str, counts: bytearray) -> tuple[int, int, int]:
    """Count each ``<id_prefix><i>`` custom_id of ``path`` into ``counts[i]`` (capped at 255).

    Returns:
        ``(lines, lines that are not JSON objects, ids that are not the input's)``; a
        missing file counts as empty.
    """
    lines = invalid = unexpected = 0
    if not path.exists():
        return 0, 0, 0
    plen = len(id_prefix)
    with open(path, "rb") as f:
        for raw in f:
            lines += 1
            try:
                cid = orjson.loads(raw).get("custom_id")
            except (orjson.JSONDecodeError, AttributeError):
                invalid += 1
                continue
            if isinstance(cid, str) and cid.startswith(id_prefix) and cid[plen:].isdigit():
                i = int(cid[plen:])
                if 1 <= i < len(counts):
                    if counts[i] < 255:
                        counts[i] += 1
                    continue
            unexpected += 1
    return lines, invalid, unexpected


def check_outputs(results: Path, errors: Path, id_prefix: str, n_ids: int) -> OutputCheck:
    """Count missing and duplicated ids, errors, and lines that are not valid JSON.

    The input's ids are ``<id_prefix>1 .. <id_prefix><n_ids>``; a ``bytearray`` of
    per-id counts keeps this cheap for a million lines.
    """
    out = OutputCheck()
    counts = bytearray(n_ids + 1)
    out.n_results, out.n_invalid_json, out.n_unexpected = count_ids(results, id_prefix, counts)
    if errors.exists():
        with open(errors, "rb") as f:
            for raw in f:
                out.n_errors += 1
                try:
                    obj = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    out.n_invalid_json += 1
                    continue
                error = obj.get("error") if isinstance(obj, dict) else None
                code = str(error.get("code")) if isinstance(error, dict) else "?"
                out.error_codes[code] = out.error_codes.get(code, 0) + 1
    zero = counts.count(0) - 1  # index 0 is not an id
    one = counts.count(1)
    out.n_missing = zero
    out.n_duplicates = n_ids - zero - one
    return out
