"""The shared limiter over TLS (``--limiter rediss://``) against a real redis-server that
listens only on a TLS port, with certificates from a throwaway CA (``openssl``):

- a real run admits through it, the CA given in the URL (``?ssl_ca_certs=``) or by
  ``$SSL_CERT_FILE``; a client certificate where the server asks for one;
- a certificate the client does not trust (no CA given, another CA, another host's name)
  fails closed at the start: a usage error (exit 2) that says how to give the CA, with
  no password in it, and nothing sent;
- the URL's options are checked before anything starts (unknown, twice, a TLS option on
  redis://, a CA file that is missing or no PEM), and its passwords never shown.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from processor.errors import ConfigError
from processor.limits import Counter, Unit
from processor.limits.redis import RedisBudget, RedisLimiter, check_url, mask_url
from processor.limits.redisurl import secrets_of, tls_warning
from tests.conftest import chat_line, read_jsonl, start_cli, write_jsonl
from tests.redisfix import RedisServer, TlsFiles, make_tls_files

PASSWORD = "tls-s3cret-pw"


async def finish(proc: asyncio.subprocess.Process, timeout: float = 90) -> tuple[int, str]:
    _, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


def with_ca(server: RedisServer, ca: Path | None = None) -> str:
    assert server.tls is not None
    return f"{server.url}?ssl_ca_certs={ca or server.tls.ca}"


async def admitted(limiter: RedisLimiter) -> None:
    """The shared counters admit a request (the first may wait a moment for refill)."""
    wait = await limiter.acquire(1)
    assert wait < 1.0 and limiter.trouble is None, (wait, limiter.trouble)
    await asyncio.sleep(wait)
    assert await limiter.acquire(1) == 0.0


async def shared_keys(url: str) -> list[str]:
    import redis.asyncio as aioredis
    client = aioredis.from_url(url)
    try:
        return sorted(k.decode() for k in await client.keys("batchproc:*"))
    finally:
        await client.aclose()


@pytest.mark.slow
async def test_a_run_admits_through_a_tls_only_redis(mock_api: Any, tls_redis: RedisServer,
                                                      tmp_path: Path) -> None:
    api = await mock_api(rpm=1200, tpm=1_000_000, initial_fill=0.0)
    n = 30
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(n)])
    url = with_ca(tls_redis)
    code, err = await finish(await start_cli(job, api.base_url, "--rpm", "1200", "--tpm",
                                             "1000000", "--limiter", url, max_in_flight=8))
    assert code == 0, err
    ids = sorted(r["custom_id"] for r in read_jsonl(tmp_path / "job.results.jsonl"))
    assert ids == sorted(f"req-{i}" for i in range(n))  # each exactly once
    assert api.stats.ok == n
    # The budget lives in that Redis, reached over TLS (it has no other port).
    keys = await shared_keys(url)
    assert any(k.endswith(":m:gpt-4o-mini") for k in keys), keys
    import redis.exceptions
    with pytest.raises(redis.exceptions.ConnectionError):  # not without TLS
        await shared_keys(url.replace("rediss://", "redis://").split("?")[0])


@pytest.mark.parametrize("ca", ["none", "other"])
async def test_an_untrusted_certificate_fails_closed_at_the_start(
        ca: str, mock_api: Any, tls_files: TlsFiles, tmp_path: Path) -> None:
    server = RedisServer.on_free_port(tmp_path, password=PASSWORD, tls=tls_files)
    try:
        api = await mock_api()
        job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(3)])
        url = server.url.replace("rediss://", f"rediss://:{PASSWORD}@")
        if ca == "other":
            url += f"?ssl_ca_certs={tls_files.other_ca}"
        code, err = await finish(await start_cli(job, api.base_url, "--rpm", "600",
                                                 "--limiter", url))
    finally:
        server.stop()
    assert code == 2, err  # a usage error, as a refused password: waiting will not help
    assert "TLS certificate is not trusted" in err and "ssl_ca_certs=" in err, err
    assert "self-signed certificate in certificate chain" in err, err
    assert PASSWORD not in err and "***" in err, err
    assert api.stats.requests == 0  # nothing sent without the shared budget


async def test_the_ca_from_ssl_cert_file(tls_redis: RedisServer,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """No CA in the URL: the system's store, which $SSL_CERT_FILE replaces."""
    assert tls_redis.tls is not None
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_redis.tls.ca))
    budget = RedisBudget(tls_redis.url, namespace="t")
    limiter = RedisLimiter(budget, [budget.key("k", "m")],
                           [Counter(Unit.REQUESTS, 60_000, initial=60_000)], [])
    try:
        await budget.check()
        await admitted(limiter)
    finally:
        await budget.aclose()


async def test_a_certificate_for_another_name_is_refused(tmp_path: Path,
                                                         tls_files: TlsFiles) -> None:
    other = make_tls_files(tmp_path / "certs", names="DNS:redis.internal")
    server = RedisServer.on_free_port(tmp_path, tls=other)
    try:
        budget = RedisBudget(with_ca(server), namespace="t")
        with pytest.raises(ConfigError, match="does not name 127.0.0.1"):
            await budget.check()
        await budget.aclose()
    finally:
        server.stop()


async def refused_at_start(url: str, words: str) -> None:
    """The start fails closed saying ``words``. TLS 1.3: the server's alert comes after
    the handshake, and its reset overtakes it about half the time; the start asks again
    (8 times) to hear it. Reset every time (about 1 in 250), it is waited for with a hint."""
    budget = RedisBudget(url, namespace="t")
    try:
        await budget.check()
    except ConfigError as exc:
        assert words in str(exc), exc
    else:
        assert budget.trouble and "ask for a client certificate" in budget.trouble
    finally:
        await budget.aclose()


async def test_client_certificates(tmp_path: Path, tls_files: TlsFiles) -> None:
    server = RedisServer.on_free_port(tmp_path, tls=tls_files, client_certs=True)
    try:
        await refused_at_start(with_ca(server),
                               "asks for a client certificate; give it with ssl_certfile")
        stranger = make_tls_files(tmp_path / "stranger")  # signed by a CA it does not know
        await refused_at_start(f"{with_ca(server)}&ssl_certfile={stranger.client_cert}"
                               f"&ssl_keyfile={stranger.client_key}",
                               "refused our client certificate")
        url = (f"{with_ca(server)}&ssl_certfile={tls_files.client_cert}"
               f"&ssl_keyfile={tls_files.client_key}")
        budget = RedisBudget(url, namespace="t")
        limiter = RedisLimiter(budget, [budget.key("k", "m")],
                               [Counter(Unit.REQUESTS, 60_000, initial=60_000)], [])
        try:
            await budget.check()
            await admitted(limiter)
        finally:
            await budget.aclose()
    finally:
        server.stop()


async def test_a_scheme_that_does_not_match_the_port_says_so(
        tls_redis: RedisServer, redis_server: RedisServer) -> None:
    """Not a certificate problem (an outage looks the same), so waited for, with a hint."""
    plain = RedisBudget(tls_redis.url.replace("rediss://", "redis://"), namespace="t")
    await plain.check()
    assert plain.trouble is not None and "rediss://" in plain.trouble, plain.trouble
    await plain.aclose()
    tls = RedisBudget(redis_server.url.replace("redis://", "rediss://"), namespace="t",
                      timeout=0.3)
    await tls.check()
    assert tls.trouble is not None and "then use redis://" in tls.trouble, tls.trouble
    await tls.aclose()


@pytest.mark.parametrize(("url", "words"), [
    ("rediss://h:1/0?bogus=1", "unknown option 'bogus'"),
    ("rediss://h:1/0?password=x", "unknown option 'password'"),
    ("rediss://h:1/0?socket_timeout=1", "unknown option"),
    ("redis://h:1/0?ssl_ca_certs=/etc/hostname", "needs rediss://"),
    ("rediss://h:1/0?ssl_cert_reqs=maybe", "one of required, optional, none"),
    ("rediss://h:1/0?ssl_check_hostname=perhaps", "ssl_check_hostname is one of"),
    ("rediss://h:1/0?ssl_cert_reqs=none&ssl_cert_reqs=none", "given twice"),
    ("rediss://h:1/0?ssl_ca_certs=/no/such/ca.pem", "no such file: /no/such/ca.pem"),
    ("rediss://h:1/0?ssl_ca_certs=", "ssl_ca_certs is empty"),
    ("rediss://h:1/0?ssl_ca_path=/no/such/dir", "no such directory"),
    ("rediss://h:1/0?ssl_ca_certs=/etc", "no such file"),
    ("rediss://h:1/0?ssl_keyfile=/etc/hostname", "ssl_keyfile needs ssl_certfile"),
    ("unix:///tmp/r.sock?db=x", "db is a number"),
])
def test_url_options_are_checked(url: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words.replace("?", "\\?")):
        check_url(url)


def test_good_urls_pass(tmp_path: Path, tls_files: TlsFiles) -> None:
    for url in ("rediss://h:6380/0", f"rediss://h/1?ssl_ca_certs={tls_files.ca}",
                f"rediss://h/0?ssl_ca_path={tls_files.ca.parent}&ssl_cert_reqs=required"
                "&ssl_check_hostname=true", "unix:///tmp/r.sock?db=2",
                f"rediss://:p@h/0?ssl_certfile={tls_files.client_cert}"
                f"&ssl_keyfile={tls_files.client_key}&ssl_password=kp"):
        check_url(url)
    (tmp_path / "notpem.crt").write_text("hello\n")
    with pytest.raises(ConfigError, match="holds no PEM certificate"):
        check_url(f"rediss://h/0?ssl_ca_certs={tmp_path / 'notpem.crt'}")


def test_passwords_in_the_url_never_show() -> None:
    url = "rediss://u:pw%40x@h:1/0?ssl_certfile=/c&ssl_keyfile=/k&ssl_password=key-pass"
    masked = mask_url(url)
    assert "pw" not in masked and "key-pass" not in masked, masked
    assert masked.startswith("rediss://u:***@h:1/0?") and "ssl_password=***" in masked
    assert "ssl_certfile=/c" in masked
    assert set(secrets_of(url)) == {"pw%40x", "key-pass"}
    assert tls_warning("rediss://h/0?ssl_cert_reqs=none") is not None
    assert tls_warning("rediss://h/0?ssl_check_hostname=false") is not None
    assert tls_warning("rediss://h/0") is None


async def test_usage_errors_through_the_cli_show_no_password(mock_api: Any,
                                                             tmp_path: Path) -> None:
    api = await mock_api()
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(0)])
    for url, words in ((f"rediss://:{PASSWORD}@127.0.0.1:1/0?bogus=1", "unknown option"),
                       (f"rediss://:{PASSWORD}@127.0.0.1:1/0?ssl_ca_certs=/no/ca.pem",
                        "no such file")):
        code, err = await finish(await start_cli(job, api.base_url, "--limiter", url))
        assert code == 2 and words in err and PASSWORD not in err, err
    assert api.stats.requests == 0
