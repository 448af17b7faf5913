"""`slm-jax units verify`: did the workers of `units encode` encode every audio file exactly once?

Reads every output of `--out` (the plain file and all `ROOT-IIIII-of-NNNNN.EXT` shards,
`speech.workers.find_shards`) without changing them, and reports:
- per id: files of `--audio` in no shard (missing), ids in more than one place (duplicated,
  each place as `shard:line`), ids in shards but not in `--audio` (unlisted);
- per shard: shards of a worker count that are absent (a worker never ran), outputs of runs
  with different worker counts side by side, a shard without its sidecar or with other
  settings than the first shard's (codebook digest, features, frame stack, rates), and lines
  that do not parse (a cut-off last line is a worker killed mid-write: rerunning it repairs
  the shard).
Files skipped as bad records (`--on_bad_record=skip`) are missing here: they have no units.
"""
from __future__ import annotations

import dataclasses
import json
import os

from slm_jax.speech import pipeline, workers


@dataclasses.dataclass
class VerifyReport:
    files: int                      # audio files listed
    records: int                    # lines read from all shards
    shards: list[str]               # every output read
    account: workers.IdAccount      # missing / duplicated / unlisted ids
    problems: list[str]             # shard-level problems (see the module doc)

    @property
    def ok(self) -> bool:
        return self.account.ok and not self.problems


def _read_ids(path: str, problems: list[str]) -> list[tuple[str, str]]:
    """(id, 'shard:line') of every record of a units JSONL; unreadable lines go to `problems`."""
    found, name = [], os.path.basename(path)
    with open(path, "rb") as f:
        lines = f.readlines()
    for line_no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("id"), str):
                raise ValueError("not a units record with a string 'id'")
        except ValueError as err:
            cut = line_no == len(lines) and not line.endswith(b"\n")
            problems.append(f"{path}:{line_no}: " + ("last line cut off (a worker killed mid-write; rerun it)"
                                                     if cut else f"unreadable line ({err})"))
            continue
        found.append((record["id"], f"{name}:{line_no}"))
    return found


def _check_sidecars(shards: list[str], problems: list[str]) -> None:
    reference = None
    for path in shards:
        meta = pipeline.read_sidecar(path)
        if meta is None:
            problems.append(f"{path}: no {os.path.basename(pipeline.sidecar_path(path))}: nothing says which "
                            f"codebook and features made it")
            continue
        if reference is None:
            reference = (path, meta)
            continue
        diff = [f"{k}: {reference[1].get(k)!r} in {os.path.basename(reference[0])}, {meta.get(k)!r} here"
                for k in pipeline.UNITS_KEY_FIELDS if meta.get(k) != reference[1].get(k)]
        if diff:
            problems.append(f"{path}: made with other settings than {reference[0]} ({'; '.join(diff)})")


def verify_units(audio_source: str, out_path: str) -> VerifyReport:
    """Checks the outputs of `--out` against the listing of `--audio` (module doc); reads, never writes.

    Raises FileNotFoundError when `--out` has no outputs at all, ValueError for a bad `--audio`.
    """
    listed = [i for i, _ in pipeline.list_audio(audio_source)]
    found_shards = workers.find_shards(out_path)
    if not found_shards:
        root, ext = os.path.splitext(out_path)
        raise FileNotFoundError(f"--out={out_path}: neither it nor any shard {root}-IIIII-of-NNNNN{ext} exists")
    problems: list[str] = []
    counts = sorted({count for _, _, count in found_shards})
    if len(counts) > 1:
        per = ", ".join(f"{sum(1 for s in found_shards if s[2] == c)} output(s) of {c} worker(s)" for c in counts)
        problems.append(f"--out={out_path}: outputs of runs with different worker counts side by side ({per}); "
                        f"keep one run's")
    for count in counts:
        present = {index for _, index, c in found_shards if c == count}
        absent = [workers.shard_path(out_path, workers.Worker(i, count)) for i in range(count) if i not in present]
        if absent:
            problems.append(f"{len(absent)} of {count} shards absent (workers that never ran): "
                            f"{', '.join(absent[:20])}{' ...' if len(absent) > 20 else ''}")
    shards = [path for path, _, _ in found_shards]
    _check_sidecars(shards, problems)
    found = [pair for path in shards for pair in _read_ids(path, problems)]
    return VerifyReport(files=len(listed), records=len(found), shards=shards,
                        account=workers.account_ids(listed, found), problems=problems)
