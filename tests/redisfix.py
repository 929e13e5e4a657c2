"""A real ``redis-server`` on 127.0.0.1 for the shared limiter's tests.

``redis_server`` starts ``/usr/bin/redis-server`` (or the one on PATH) on a free port with
no persistence, in its own temporary directory, and stops it at the end. Tests that use
it skip, saying why, only where no ``redis-server`` binary exists.

``tls_redis`` starts one that listens only on a TLS port, with a certificate from a
throwaway CA made by the ``openssl`` command (``tls_files``: that CA, a second CA nobody
trusts, a client certificate). Tests that use it skip, saying why, only where the
redis-server was built without TLS or no ``openssl`` command exists.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

BINARY = "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") \
    else shutil.which("redis-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class TlsFiles:
    """A throwaway CA, a server certificate it signed (for 127.0.0.1 and localhost, or
    ``names``), a client certificate it signed, and another CA that signed nothing here."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


@dataclass
class RedisServer:
    """A redis-server process the test may stop and start again on the same port."""

    port: int
    folder: Path
    password: str | None = None
    process: subprocess.Popen[bytes] | None = None
    #: listen on a TLS port only (no plain port) with these certificates.
    tls: TlsFiles | None = None
    #: with ``tls``: ask clients for a certificate signed by the CA.
    client_certs: bool = False

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    @classmethod
    def on_free_port(cls, folder: Path, **kw: Any) -> RedisServer:
        """Started on a free port: another is tried when the one picked was taken before
        redis-server bound it (a pick is only free until someone else, another pytest
        worker's connection say, takes it)."""
        for attempt in range(5):
            server = cls(free_port(), folder, **kw)
            try:
                server.start()
                return server
            except RuntimeError:
                said = (folder / "redis.log").read_text(errors="replace")
                if attempt == 4 or "Address already in use" not in said:
                    raise
        raise AssertionError("unreachable")

    def start(self) -> None:
        assert BINARY is not None
        port = ["--port", str(self.port)]
        if self.tls is not None:
            port = ["--port", "0", "--tls-port", str(self.port),
                    "--tls-cert-file", str(self.tls.server_cert),
                    "--tls-key-file", str(self.tls.server_key),
                    "--tls-ca-cert-file", str(self.tls.ca),
                    "--tls-auth-clients", "yes" if self.client_certs else "no"]
        args = [BINARY, *port, "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.folder)]
        if self.password:
            args += ["--requirepass", self.password]
        log = self.folder / "redis.log"
        start = log.stat().st_size if log.exists() else 0
        with open(log, "ab") as out:  # why it did not start
            self.process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                            cwd=self.folder)
        # Ready when it says so: a connection that opens may be to whoever else holds the
        # port (then this one exits: "Address already in use").
        deadline = time.monotonic() + 60  # a bound for a hang: it starts in milliseconds
        while time.monotonic() < deadline and self.process.poll() is None:
            if b"Ready to accept connections" in log.read_bytes()[start:]:
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server on 127.0.0.1 (free port), stopped at the end."""
    if BINARY is None:
        pytest.skip("no redis-server binary (apt-get install redis-server)")
    folder = tmp_path / "redis"
    folder.mkdir()
    server = RedisServer.on_free_port(folder)
    try:
        yield server
    finally:
        server.stop()


OPENSSL = shutil.which("openssl")


def tls_unavailable() -> str | None:
    """Why TLS tests cannot run here (None: they can): no redis-server or no openssl (a
    redis-server built without TLS is found out by :func:`tls_files`, which tries it)."""
    if BINARY is None:
        return "no redis-server binary (apt-get install redis-server)"
    if OPENSSL is None:
        return "no openssl command to make certificates (apt-get install openssl)"
    return None


def _openssl(*args: str, cwd: Path) -> None:
    assert OPENSSL is not None
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_tls_files(folder: Path, names: str = "IP:127.0.0.1,DNS:localhost") -> TlsFiles:
    """Make the CAs and certificates with the ``openssl`` command (EC P-256: fast)."""
    folder.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "other-ca"):
        _openssl("req", "-x509", *ec, "-keyout", f"{ca}.key", "-out", f"{ca}.crt",
                 "-days", "2", "-subj", f"/CN=batchproc test {ca}", cwd=folder)
    (folder / "server.ext").write_text(f"subjectAltName={names}\n")
    (folder / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for who in ("server", "client"):
        _openssl("req", *ec, "-keyout", f"{who}.key", "-out", f"{who}.csr",
                 "-subj", f"/CN=batchproc test {who}", cwd=folder)
        _openssl("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{who}.crt", "-days", "2",
                 "-extfile", f"{who}.ext", cwd=folder)
    return TlsFiles(folder / "ca.crt", folder / "server.crt", folder / "server.key",
                    folder / "client.crt", folder / "client.key", folder / "other-ca.crt")


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """The throwaway CAs and certificates (made once a session)."""
    folder = tmp_path_factory.mktemp("tls")
    why = tls_unavailable()
    if why is not None:
        pytest.skip(why)
    files = make_tls_files(folder)
    try:
        probe = RedisServer.on_free_port(folder, tls=files)
    except RuntimeError:
        said = (folder / "redis.log").read_text(errors="replace")
        if "Bad directive" in said or "TLS" in said:  # built without TLS
            pytest.skip(f"this redis-server cannot serve TLS: {said.strip()[-200:]}")
        raise
    probe.stop()
    return files


@pytest.fixture
def tls_redis(tmp_path: Path, tls_files: TlsFiles) -> Iterator[RedisServer]:
    """A redis-server on 127.0.0.1 that listens only on TLS (free port), stopped at the end."""
    folder = tmp_path / "redis-tls"
    folder.mkdir()
    server = RedisServer.on_free_port(folder, tls=tls_files)
    try:
        yield server
    finally:
        server.stop()
