"""What the run log costs a ``--via batch`` run: collecting a finished batch of 50,000
lines (its output file into the results, ledger and stats) with the log's one ``a``
event per line, and without (the no-op sink), in-process.

    PYTHONPATH=. python bench/batch_runlog.py [--lines 50000] [--repeat 5]
    PYTHONPATH=. python bench/batch_runlog.py --micro

``--micro`` times the one call per line on its own (build the event, serialise it,
buffer it; a write per MiB), against the no-op sink's, best of five rounds.

Collections alternate (log, none, log, none, ...) so the machine's load hits both
alike; medians of CPU time (process time) per line are compared. Prints one line per
collection, then the medians, the overhead and the log's bytes per line.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import orjson

from processor.batchapi.collect import Collector
from processor.batchapi.plan import Limits, plan_parts
from processor.batchapi.runlog import BatchEvents
from processor.batchapi.state import BatchState, PartState
from processor.client.masking import Masker
from processor.idset import IdSet
from processor.jobs import Job, iter_jobs
from processor.run.retry import RetryPolicy
from processor.stats import Stats
from processor.store.runlog import RunLog
from processor.store.writer import ResultWriter

LINE = ('{"custom_id":"r%d","method":"POST","url":"/v1/chat/completions","body":'
        '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Question %d?"}],'
        '"max_tokens":8}}\n')
OUT = ('{"id":"batch_req_%d","custom_id":"r%d","response":{"status_code":200,"request_id":'
       '"req_%d","body":{"id":"chatcmpl-%d","object":"chat.completion","created":1,"model":'
       '"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":'
       '"An answer of a few words."},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,'
       '"completion_tokens":7,"total_tokens":19}}},"error":null}\n')


def _prepare(item: object) -> Job | None:
    if not isinstance(item, Job):
        return None
    item.payload = orjson.dumps(item.body)
    item.prompt_tokens = 12
    return item


def collect_once(folder: Path, lines: int, logged: bool) -> tuple[float, int]:
    """CPU seconds of one collection, and the log's size (0 without)."""
    for path in folder.iterdir():
        path.unlink()
    job = folder / "job.jsonl"
    job.write_text("".join(LINE % (i, i) for i in range(lines)))
    state = BatchState(job="job.jsonl")
    (part,) = plan_parts(iter_jobs(job), state, folder, _prepare, Limits(requests=lines),
                         lambda _: False)
    part.intent_at = time.time()
    out = folder / "out.jsonl"
    out.write_text("".join(OUT % (i, i, i, i) for i in range(lines)))
    writer = ResultWriter(folder / "job.results.jsonl", folder / "job.errors.jsonl")
    collector = Collector(folder, writer, Stats(), Masker(), RetryPolicy(5), IdSet(),
                          IdSet(values=True))
    log = RunLog(folder / "job.run.jsonl", clock=time.monotonic).open() if logged else None
    if log is not None:
        collector.events = BatchEvents(log)
    start = time.process_time()
    got = collector.collect(part, {"id": "batch_1", "status": "completed"}, [out])
    if log is not None:
        log.close()
    writer.close()
    spent = time.process_time() - start
    assert got.answered == lines
    size = (folder / "job.run.jsonl").stat().st_size if logged else 0
    return spent, size


def micro(calls: int = 200_000) -> None:
    part = PartState("p0001", "p0001.jsonl", "/v1/chat/completions", "gpt-4o-mini", 50_000,
                     1, 600_000, intent_at=time.time())
    with tempfile.TemporaryDirectory() as tmp:
        for name, log in (("log ", RunLog(Path(tmp) / "m.run.jsonl",
                                          clock=time.monotonic).open()), ("none", None)):
            events = BatchEvents(log) if log is not None else BatchEvents()
            events.begin(part, {"id": "batch_1"})
            best = float("inf")
            for _ in range(5):
                start = time.process_time()
                for _ in range(calls):
                    events.line("r12345", 1, 200, 12, 7)
                best = min(best, time.process_time() - start)
            print(f"{name}: {best / calls * 1e6:.2f} us per line")
            if log is not None:
                log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--micro", action="store_true")
    args = parser.parse_args()
    if args.micro:
        micro()
        return
    times: dict[bool, list[float]] = {True: [], False: []}
    size = 0
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for _ in range(args.repeat):
            for logged in (True, False):
                spent, got = collect_once(folder, args.lines, logged)
                times[logged].append(spent)
                size = got or size
                print(f"{'log ' if logged else 'none'} {spent:.3f}s cpu "
                      f"({spent / args.lines * 1e6:.1f} us/line)")
    with_log, without = statistics.median(times[True]), statistics.median(times[False])
    print(f"median: log {with_log:.3f}s, none {without:.3f}s; overhead "
          f"{(with_log / without - 1) * 100:+.1f}% "
          f"({(with_log - without) / args.lines * 1e6:+.2f} us/line); "
          f"log {size / args.lines:.0f} bytes/line ({args.lines:,} lines)")


if __name__ == "__main__":
    main()
