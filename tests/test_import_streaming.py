"""Streaming import: shards written as records are read (by count or by size), on-disk duplicate
ids, bad records counted per kind and written with their reasons."""

import json

import pytest
import tensorflow as tf

from slm_jax.cli import prepare_import
from slm_jax.data import corpus
from slm_jax.data.corpus import import_run
from slm_jax.data.corpus.seen_ids import SeenIds
from slm_jax.data.corpus.shard_writer import ShardWriter


def _records(path):
    return [bytes(r) for r in tf.data.TFRecordDataset(path).as_numpy_iterator()]


@pytest.mark.parametrize("n,num_shards", [(10, 3), (2, 4), (7, 1)])
def test_streamed_count_shards_equal_the_in_memory_cut(tmp_path, n, num_shards):
    recs = [f"record-{k}".encode() * (k + 1) for k in range(n)]
    known = corpus.write_serialized_shards(str(tmp_path / "a"), "c", recs, num_shards)  # total known
    with ShardWriter(str(tmp_path / "b"), "c", num_shards=num_shards) as w:  # total unknown: spool
        for r in recs:
            w.write(r)
        streamed = w.close()
    assert [p.split("/")[-1] for p in known] == [p.split("/")[-1] for p in streamed]
    assert [_records(p) for p in known] == [_records(p) for p in streamed]
    assert sum((_records(p) for p in streamed), []) == recs
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == sorted(p.split("/")[-1] for p in streamed)


def test_size_shards_cut_in_order_and_abort_leaves_nothing(tmp_path):
    recs = [bytes([k]) * 300_000 for k in range(7)]  # 0.29 MiB each (+16 framing bytes)
    with ShardWriter(str(tmp_path), "s", shard_size_mb=1.0) as w:
        for r in recs:
            w.write(r)
        paths = w.close()
    assert [p.split("/")[-1] for p in paths] == [f"s-{i:05d}-of-00003.tfrecord" for i in range(3)]
    assert [len(_records(p)) for p in paths] == [3, 3, 1] and sum((_records(p) for p in paths), []) == recs
    with pytest.raises(RuntimeError):
        with ShardWriter(str(tmp_path / "x"), "s", num_shards=2) as w:
            w.write(b"a")
            raise RuntimeError("stop")
    assert list((tmp_path / "x").iterdir()) == []
    with pytest.raises(FileExistsError, match="shards of another shard count exist"):
        ShardWriter(str(tmp_path), "s", num_shards=2)


def test_seen_ids_on_disk():
    with SeenIds() as seen:
        assert seen.first_at("a", "f:1") is None and seen.first_at("b", "f:2") is None
        assert seen.first_at("a", "f:3") == "f:1"


def test_import_skips_per_kind_and_writes_bad_records(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    lines = [json.dumps({"id": "a", "units": [1, 2, 2], "duration": [1, 1, 2]}),
             "{not json",
             json.dumps({"id": "b", "units": [1, 900]}),
             json.dumps({"id": "a", "units": [3]}),
             json.dumps({"id": "c", "units": [4, 4], "durations": [1]}),
             json.dumps({"id": "d"}),
             json.dumps({"id": "e", "units": [5, 6]})]
    src.write_text("\n".join(lines) + "\n")
    out, bad = tmp_path / "o" / "c", tmp_path / "bad.jsonl"
    argv = ["--format=slamkit", f"--input={src}", f"--output={out}", "--unit_rate_hz=25", "--on_bad_record=skip",
            "--shard_size_mb=0.0001", f"--bad_records_out={bad}"]
    assert prepare_import.import_main(argv) == 0
    printed = capsys.readouterr().out
    assert "wrote 2 record(s) to 2 shard(s)" in printed and "skipped 5" in printed
    for kind in ("invalid_json", "bad_units", "duplicate_id", "bad_durations", "missing_units"):
        assert f"  skipped {kind}: 1" in printed
    rows = [json.loads(x) for x in bad.read_text().splitlines()]
    assert [r["where"] for r in rows] == [f"{src}:{k}" for k in (2, 3, 4, 5, 6)]
    assert rows[2]["reason"] == f"{src}:4: record 'a': duplicate id (first at {src}:1)"
    assert "units[1]=900 out of range" in rows[1]["reason"] and rows[1]["kind"] == "bad_units"
    assert [u.id for u in corpus.read_tfrecord(str(out) + "-*")] == ["a", "e"]
    assert prepare_import.import_main(argv[:4] + [f"--bad_records_out={bad}"]) == 1
    assert "needs --on_bad_record=skip" in capsys.readouterr().err


def test_reshard_an_slm_jax_corpus(tmp_path):
    utts = [corpus.Utterance(id=f"u{k}", lang="en", units=[k, k + 1], unit_rate_hz=25.0) for k in range(5)]
    corpus.write_jsonl(str(tmp_path / "a.jsonl"), utts[:2])
    corpus.write_tfrecord_shards(str(tmp_path), "b", utts[2:], num_shards=1)
    summary = import_run.import_to_tfrecord("slm_jax", str(tmp_path / "[ab]*"), str(tmp_path / "o" / "r"),
                                            num_units=10, num_shards=2)
    assert list(corpus.read_tfrecord(summary["shards"])) == utts
    with pytest.raises(ValueError, match="--format=slm_jax: pass --num_units"):
        import_run.import_to_tfrecord("slm_jax", str(tmp_path / "a.jsonl"), str(tmp_path / "o" / "s"))
