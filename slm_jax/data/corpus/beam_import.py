"""`slm-jax prepare import --runner=...`: the same import as an Apache Beam pipeline.

Why Beam: a paper-scale corpus (billions of units) is prepared on a distributed engine; Beam's
DirectRunner runs the pipeline locally, DataflowRunner / FlinkRunner / SparkRunner at scale.
Needs the `beam` extra (`pip install -e ".[beam]"`); workers of a remote runner need slm_jax
installed too (e.g. a container image with it: `--sdk_container_image=...`).

The pipeline (each step reuses the single-process code of `import_run`, so both paths accept,
repair and refuse exactly the same records):

1. the input files are listed when the pipeline is built (`corpus.list_files`: sorted per glob,
   the single-process order) and spread over workers; a file is read by one worker, in order
   (`iter_file_records`), so parallelism is per file: split a large corpus into many files;
2. each record is converted, repaired and validated by `convert_record`;
3. records are grouped by id: the one read first (file order, then line order) is kept, every
   later one is a `duplicate_id` bad record (`duplicate_id_error`), as in the single process;
4. the kept records are written with Beam's `WriteToTFRecord` as
   `output-SSSSS-of-NNNNN.tfrecord` (`num_shards`; 0: the runner chooses).

The written records equal the single-process import's as a set (the same bytes, `corpus.serialize`
is deterministic); their order and cut into shards may differ. Bad records, with
`on_bad_record='skip'`, are counted per kind (`bad_record_kind`) in Beam metrics and, with
`bad_records_out`, written as JSON lines {"where", "kind", "reason"} to
`bad_records_out-SSSSS-of-NNNNN.jsonl`. With `on_bad_record='error'` the first bad record a
worker meets fails the pipeline (the runner's error carries the record's message). The import
report is summed from Beam metrics (committed values where the runner has them).
"""

from __future__ import annotations

import collections
import os

import apache_beam as beam
import tensorflow as tf
from apache_beam import coders
from apache_beam.metrics.metric import Metrics, MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from slm_jax.data import corpus
from slm_jax.data.corpus import BadRecordError
from slm_jax.data.corpus.import_run import (ImportOptions, bad_record_kind, bad_record_line, check_shard_args,
                                            convert_record, duplicate_id_error, iter_file_records, split_output)
from slm_jax.data.corpus.importers import SPIRITLM_PITCH_RATE_HZ, SPIRITLM_STYLE_RATE_HZ
from slm_jax.data.corpus.schema import SHARD_SUFFIX
from slm_jax.data.corpus.shard_writer import check_no_foreign_shards, shard_path

NS_REPORT = "slm_jax_import_report"  # one counter per import report key
NS_SKIPPED = "slm_jax_import_skipped"  # one counter per bad-record kind
NS_TOTALS = "slm_jax_import"  # records_read, records_written
BAD = "bad"  # the tag of the bad-records side output


class _ConvertFile(beam.DoFn):
    """(file index, path) -> (id, (position, where, serialized record, report counts)) per good record;
    bad records go to the `bad` output as (where, kind, reason), or raise with on_bad_record='error'."""

    def __init__(self, opts: ImportOptions, on_bad_record: str):
        self.opts, self.on_bad_record = opts, on_bad_record
        self.read = Metrics.counter(NS_TOTALS, "records_read")

    def process(self, element):
        file_index, path = element
        for ordinal, (where, payload) in enumerate(iter_file_records(self.opts.fmt, path)):
            self.read.inc()
            try:
                utt, counts = convert_record(self.opts, where, payload)
            except BadRecordError as e:
                if self.on_bad_record == "error":
                    raise
                kind = bad_record_kind(str(e), where)
                Metrics.counter(NS_SKIPPED, kind).inc()
                yield beam.pvalue.TaggedOutput(BAD, (where, kind, str(e)))
                continue
            record = corpus.serialize(corpus.to_example(utt))
            yield utt.id, ((file_index, ordinal), where, record, sorted(counts.items()))


class _FirstOfEachId(beam.DoFn):
    """(id, records) -> the record read first (its serialized bytes; its report counts go to metrics);
    the others are `duplicate_id` bad records."""

    def __init__(self, on_bad_record: str):
        self.on_bad_record = on_bad_record
        self.written = Metrics.counter(NS_TOTALS, "records_written")

    def process(self, element):
        record_id, records = element
        first, *later = sorted(records, key=lambda r: r[0])
        for _, where, _, _ in later:
            err = duplicate_id_error(where, record_id, first[1])
            if self.on_bad_record == "error":
                raise err
            Metrics.counter(NS_SKIPPED, "duplicate_id").inc()
            yield beam.pvalue.TaggedOutput(BAD, (where, "duplicate_id", str(err)))
        for key, value in first[3]:
            Metrics.counter(NS_REPORT, key).inc(value)
        self.written.inc()
        yield first[2]


def build_pipeline(pipeline: beam.Pipeline, opts: ImportOptions, files: list[str], output: str, *,
                   num_shards: int, on_bad_record: str, bad_records_out: str | None) -> None:
    """Adds the import to `pipeline` (see the module docstring); `opts` must be `checked()`."""
    converted = (pipeline
                 | "ListFiles" >> beam.Create(list(enumerate(files)))
                 | "SpreadFiles" >> beam.Reshuffle()
                 | "Convert" >> beam.ParDo(_ConvertFile(opts, on_bad_record)).with_outputs(BAD, main="ok"))
    kept = (converted.ok
            | "GroupById" >> beam.GroupByKey()
            | "FirstOfEachId" >> beam.ParDo(_FirstOfEachId(on_bad_record)).with_outputs(BAD, main="ok"))
    _ = kept.ok | "WriteShards" >> beam.io.WriteToTFRecord(
        output, coder=coders.BytesCoder(), file_name_suffix=SHARD_SUFFIX, num_shards=num_shards,
        shard_name_template="-SSSSS-of-NNNNN")
    if bad_records_out:
        _ = ((converted[BAD], kept[BAD])
             | "BadRecords" >> beam.Flatten()
             | "BadRecordLines" >> beam.MapTuple(lambda where, kind, reason: bad_record_line(where, kind, reason)[:-1])
             | "WriteBadRecords" >> beam.io.WriteToText(bad_records_out, file_name_suffix=".jsonl",
                                                       shard_name_template="-SSSSS-of-NNNNN"))


def _counters(result, namespace: str) -> dict[str, int]:
    """Metric name -> value summed over steps (committed where the runner reports it, else attempted)."""
    out: collections.Counter = collections.Counter()
    for c in result.metrics().query(MetricsFilter().with_namespace(namespace))["counters"]:
        value = c.committed if c.committed is not None else c.attempted
        out[c.key.metric.name] += value or 0
    return dict(sorted(out.items()))


def run_beam_import(
    fmt: str,
    input_pattern: str,
    output: str,
    *,
    runner: str = "DirectRunner",
    pipeline_args: list[str] | None = None,
    lang: str = "en",
    num_shards: int | None = None,
    on_bad_record: str = "error",
    bad_records_out: str | None = None,
    num_units: int | None = None,
    num_pitch: int | None = None,
    num_style: int | None = None,
    unit_rate_hz: float | None = None,
    pitch_rate_hz: float = SPIRITLM_PITCH_RATE_HZ,
    style_rate_hz: float = SPIRITLM_STYLE_RATE_HZ,
) -> dict:
    """Runs the import on a Beam `runner` and waits for it; returns the summary of
    `import_run.import_to_tfrecord` ({'written', 'skipped', 'skipped_by_kind', 'shards', 'report'}).

    `pipeline_args`: more Beam PipelineOptions flags (e.g. `--direct_num_workers=2`,
    `--project=...`). `num_shards` (default 1; 0: the runner chooses). BadRecordError when no
    record is valid (the empty shards are removed) or, with on_bad_record='error', for the
    first bad record (message of the runner's failure); FileExistsError when shards of another
    count exist for the prefix; ValueError on bad settings.
    """
    opts = ImportOptions(fmt, lang, num_units, num_pitch, num_style, unit_rate_hz, pitch_rate_hz,
                         style_rate_hz).checked()
    corpus.check_on_bad_record(on_bad_record)
    if bad_records_out and on_bad_record != "skip":
        raise ValueError(f"--bad_records_out={bad_records_out!r} needs --on_bad_record=skip")
    num_shards, _ = check_shard_args(num_shards, None)
    if num_shards < 0:
        raise ValueError(f"--num_shards={num_shards}: expected >= 1, or 0 to let the runner choose")
    out_dir, prefix = split_output(output)
    files = corpus.list_files(input_pattern)
    tf.io.gfile.makedirs(out_dir)
    check_no_foreign_shards(out_dir, prefix, [shard_path(out_dir, prefix, i, num_shards) for i in range(num_shards)])
    options = PipelineOptions([f"--runner={runner}", *(pipeline_args or [])])
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, opts, files, output, num_shards=num_shards, on_bad_record=on_bad_record,
                   bad_records_out=bad_records_out)
    try:
        result = pipeline.run()
        result.wait_until_finish()
    except BadRecordError:
        raise
    except Exception as e:  # the runner wraps a worker's BadRecordError; keep its first line
        if "BadRecordError" in f"{type(e).__name__} {e}":
            raise BadRecordError(_first_bad_record_line(str(e))) from None
        raise
    totals = _counters(result, NS_TOTALS)
    skipped = _counters(result, NS_SKIPPED)
    shards = sorted(tf.io.gfile.glob(os.path.join(out_dir, f"{prefix}-*-of-*{SHARD_SUFFIX}")))
    written, read = totals.get("records_written", 0), totals.get("records_read", 0)
    if written == 0:
        for path in shards:
            tf.io.gfile.remove(path)
        raise BadRecordError(f"{input_pattern}: no valid records to write ({sum(skipped.values())} skipped of {read})")
    return {"written": written, "skipped": sum(skipped.values()), "skipped_by_kind": skipped, "shards": shards,
            "report": _counters(result, NS_REPORT)}


def _first_bad_record_line(message: str) -> str:
    """The BadRecordError's own message out of a runner's wrapped error text."""
    for line in message.splitlines():
        if "BadRecordError: " in line:
            return line.split("BadRecordError: ", 1)[1].split(" [while running", 1)[0].strip()
    return message.splitlines()[0] if message else message
