"""A shard's files: their default names, and the marker that ties outputs to one shard.

Shard K of N writes ``<stem>.shard-K-of-N.results.jsonl`` and
``<stem>.shard-K-of-N.errors.jsonl`` beside the input by default (each with its own
ledger and locks, so workers with different K never collide, and the same K twice is
refused by the lock). Whatever the names, ``<results>.shard`` beside the results file
records which shard wrote them; it is written before the first output, so a rerun
with another K or N, or without ``--shard``, against the same files is refused
instead of mixing two splits of the job in one file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import orjson

from ..errors import ConfigError
from ..shards import Shard

__all__ = ["ShardFiles", "check_marker", "find_shard_files", "marker_path", "other_splits",
           "read_marker", "shard_paths", "split_problems", "stem_of"]

_SCHEME = "bp-shard-v1"  # the hash of processor.shards: another scheme is another split
_NAME = re.compile(r"^(?P<stem>.*)\.shard-(?P<k>\d+)-of-(?P<n>\d+)\.results\.jsonl$")


def stem_of(input_path: Path) -> str:
    """The name outputs are derived from: the input's name without ``.jsonl``."""
    name = input_path.name
    return name[:-6] if name.endswith(".jsonl") else input_path.stem


def shard_paths(input_path: Path, shard: Shard) -> tuple[Path, Path]:
    """The default results and errors files of ``shard`` beside the input."""
    base = f"{stem_of(input_path)}.{shard.tag}"
    return (input_path.with_name(f"{base}.results.jsonl"),
            input_path.with_name(f"{base}.errors.jsonl"))


def marker_path(results: Path) -> Path:
    """``<results>.shard`` (beside the file a symlink names, like the ledger)."""
    if os.path.islink(results):
        results = Path(os.path.realpath(results))
    return results.with_name(results.name + ".shard")


def read_marker(path: Path) -> Shard | None:
    try:
        data = orjson.loads(path.read_bytes())
        shard = Shard(int(data["k"]), int(data["n"]))
    except FileNotFoundError:
        return None
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path} (which shard wrote the outputs beside it) cannot be "
                          f"read: {exc}; move it away only if you know those outputs are "
                          "of this shard") from None
    if data.get("scheme", _SCHEME) != _SCHEME:
        raise ConfigError(f"{path}: the outputs were split by another scheme "
                          f"({data.get('scheme')!r}); use other files or --fresh")
    return shard


def _job_name(marker: Path) -> str:
    """The job file's name a marker records ("" if none: read_marker vouched for it)."""
    try:
        name = orjson.loads(marker.read_bytes()).get("job")
    except (OSError, orjson.JSONDecodeError, AttributeError):
        return ""
    return name if isinstance(name, str) else ""


def _has_records(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


def check_marker(results: Path, errors: Path, shard: Shard | None,
                 job: Path | None = None) -> None:
    """Refuse outputs written by another shard (or unsharded), and mark new ones.

    Call under the job's lock, after ``--fresh`` moved old outputs aside and before
    anything is written.

    Raises:
        ConfigError: the outputs belong to another shard, or to a run without
            ``--shard`` (when this one has it), or to a shard (when this one has none).
    """
    marker = marker_path(results)
    found = read_marker(marker)
    if shard is None:
        if found is not None:
            raise ConfigError(
                f"{results} was written by shard {found} (see {marker.name}): rerun it with "
                f"--shard {found}, or combine the shards with `batchproc merge`, or give "
                "other output files")
        return
    if found is not None:
        if found != shard:
            what = ("another number of workers" if found.n != shard.n else "another worker")
            raise ConfigError(
                f"{results} was written by shard {found}, and this is shard {shard} "
                f"({what}): a rerun must use the same --shard {found} to resume (a "
                "different N splits the lines differently, so answers would be lost or "
                "repeated); give other output files, or --fresh to start this shard over")
        return
    for path in (results, errors):
        if _has_records(path):
            raise ConfigError(
                f"{path} holds records of a run without --shard (or whose {marker.name} "
                f"was removed): shard {shard} will not mix into it; give other output "
                "files, or --fresh to move it aside")
    data: dict[str, object] = {"k": shard.k, "n": shard.n, "scheme": _SCHEME}
    if job is not None:  # which job: `merge` refuses to mix shards of two jobs
        data["job"] = job.name
    tmp = marker.with_name(f"{marker.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(orjson.dumps(data) + b"\n")
        os.replace(tmp, marker)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {marker}: {exc.strerror or exc}") from None


@dataclass(frozen=True, slots=True)
class ShardFiles:
    """One shard's default outputs, found beside a job."""

    shard: Shard
    results: Path
    errors: Path


def find_shard_files(input_path: Path) -> dict[int, list[ShardFiles]]:
    """The shard outputs beside a job, by N (the number of workers), sorted by K."""
    stem = stem_of(input_path)
    found: dict[int, list[ShardFiles]] = {}
    folder = input_path.parent
    try:
        names = os.listdir(folder if str(folder) else ".")
    except OSError:
        return found
    for name in names:
        m = _NAME.match(name)
        if m is None or m.group("stem") != stem:
            continue
        k, n = int(m.group("k")), int(m.group("n"))
        if n < 1 or not 1 <= k <= n:
            continue
        shard = Shard(k, n)
        results, errors = shard_paths(input_path, shard)
        found.setdefault(n, []).append(ShardFiles(shard, results, errors))
    for group in found.values():
        group.sort(key=lambda f: f.shard.k)
    return found


def other_splits(input_path: Path, shard: Shard) -> list[Path]:
    """Default results files beside the job of a split into another number of workers
    that hold records (a rerun with another N would answer their lines again)."""
    return [f.results for n, group in sorted(find_shard_files(input_path).items())
            if n != shard.n for f in group if _has_records(f.results)]


def split_problems(results: list[Path]) -> list[str]:
    """What is wrong with a set of shard results files as one whole split, by their
    markers: shards of different splits, a shard given twice, shards missing. Files
    without a marker (another tool's, an unsharded run's) are not judged."""
    marks: list[tuple[Path, Shard]] = []
    jobs: dict[str, Path] = {}
    for path in results:
        try:
            shard = read_marker(marker_path(path))
        except ConfigError as exc:
            return [str(exc)]
        if shard is not None:
            marks.append((path, shard))
            jobs.setdefault(_job_name(marker_path(path)), path)
    if not marks:
        return []
    jobs.pop("", None)  # a marker that names no job (an older batchproc's) is not judged
    if len(jobs) > 1:
        return ["the files are shards of different jobs (" + ", ".join(
            f"{path} of {name}" for name, path in jobs.items()) + "): merge one job's "
            "shards at a time"]
    splits = sorted({s.n for _, s in marks})
    if len(splits) > 1:
        return [f"the files are shards of different splits (into {', '.join(map(str, splits))} "
                "workers): their lines overlap; merge one split at a time"]
    n = splits[0]
    problems = []
    by_k: dict[int, list[Path]] = {}
    for path, shard in marks:
        by_k.setdefault(shard.k, []).append(path)
    for k, paths in sorted(by_k.items()):
        if len(paths) > 1:
            problems.append(f"shard {k}/{n} is given twice ({', '.join(map(str, paths))}): "
                            "two runs of one shard answer the same lines")
    missing = [str(k) for k in range(1, n + 1) if k not in by_k]
    if missing and len(marks) == len(results):
        problems.append(f"shard(s) {', '.join(missing)} of {n} are missing: the merged files "
                        "lack their lines")
    return problems
