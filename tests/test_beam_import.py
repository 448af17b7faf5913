"""Beam import (DirectRunner) equals the single-process import record for record, as a set."""

import json

import pytest

beam = pytest.importorskip("apache_beam", reason="Apache Beam is not installed (pip install -e '.[beam]'); "
                           "the Beam import tests need it")

import tensorflow as tf  # noqa: E402

from slm_jax.cli import prepare_import  # noqa: E402
from slm_jax.data.corpus import beam_import, import_run  # noqa: E402


def _all_records(paths):
    return sorted(bytes(r) for p in paths for r in tf.data.TFRecordDataset(p).as_numpy_iterator())


def _slamkit_inputs(tmp_path):
    """Two files; good records of every kind the importer repairs, and one bad record of each kind."""
    a = [{"file_name": "a.flac", "units": [k // 3 for k in range(49)], "duration": 1.0,
          "aligned_text": [["the", 0.0, 0.2], ["cat", 0.2, 0.2], ["sat", 0.9, 1.4]], "text": "the  cat"},
         {"file_name": "b.flac", "units": [1, 2], "durations": [30, 44], "duration": 1.5, "f0": [1.0]},
         "{broken",
         {"file_name": "c.flac", "units": [1, 999], "unit_rate_hz": 25.0},
         {"file_name": "b.flac", "units": [7, 7], "unit_rate_hz": 25.0}]
    b = [{"id": "d", "units": "4 4 5", "unit_rate_hz": 50.0, "lang": "fr"},
         {"id": "a.flac", "units": [1], "unit_rate_hz": 25.0},
         {"id": "e", "units": [1, 2], "duration": [2]},
         {"id": "f", "units": [3, 3, 3], "unit_rate_hz": 25.0, "text": "caf\u0065\u0301"}]
    (tmp_path / "in").mkdir()
    for name, recs in (("a.jsonl", a), ("b.jsonl", b)):
        (tmp_path / "in" / name).write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in recs) + "\n")
    return str(tmp_path / "in" / "*.jsonl")


def _textlesslib_inputs(tmp_path):
    (tmp_path / "t.units").write_text("u1\t1 1 2\nu2\t3 3\nu1\t4\nu3\t1 900\n")
    (tmp_path / "t.durations").write_text("u1\t1 1 1\nu2\t2 2\nu1\t1\nu3\t1 1\n")
    return str(tmp_path / "t.units")


@pytest.mark.parametrize("fmt,make", [("slamkit", _slamkit_inputs), ("textlesslib", _textlesslib_inputs)])
def test_beam_import_equals_single_process(tmp_path, fmt, make):
    pattern = make(tmp_path)
    kw = dict(on_bad_record="skip", unit_rate_hz=None if fmt == "slamkit" else 50.0)
    single = import_run.import_to_tfrecord(fmt, pattern, str(tmp_path / "single" / "c"), num_shards=2,
                                           bad_records_out=str(tmp_path / "single_bad.jsonl"), **kw)
    beamed = beam_import.run_beam_import(fmt, pattern, str(tmp_path / "beam" / "c"), runner="DirectRunner",
                                         num_shards=3, bad_records_out=str(tmp_path / "beam_bad"), **kw)
    assert single["written"] > 0 and _all_records(beamed["shards"]) == _all_records(single["shards"])
    assert [p.split("/")[-1] for p in beamed["shards"]] == [f"c-{i:05d}-of-00003.tfrecord" for i in range(3)]
    for key in ("written", "skipped", "skipped_by_kind", "report"):
        assert beamed[key] == single[key], key
    bad_single = sorted((json.loads(x) for x in (tmp_path / "single_bad.jsonl").read_text().splitlines()), key=str)
    bad_beam = sorted((json.loads(x) for p in tf.io.gfile.glob(str(tmp_path / "beam_bad-*.jsonl"))
                      for x in open(p).read().splitlines()), key=str)
    assert bad_beam == bad_single and len(bad_beam) == single["skipped"] >= 2
    by_kind = {r["kind"]: r for r in bad_beam}
    assert "duplicate_id" in by_kind and "(first at " in by_kind["duplicate_id"]["reason"]
    assert all(r["reason"].startswith(r["where"] + ": ") for r in bad_beam)  # file:line, then the reason


def test_beam_cli_error_and_options(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": "a", "units": [1, 2]}) + "\n" + json.dumps({"id": "b", "units": [1, 900]}) + "\n")
    argv = ["--format=slamkit", f"--input={src}", "--unit_rate_hz=25", "--runner=DirectRunner",
            "--direct_num_workers=1"]
    assert prepare_import.import_main(argv + [f"--output={tmp_path / 'o' / 'c'}"]) == 1
    err = capsys.readouterr().err
    assert f"{src}:2: record 'b': units[1]=900 out of range" in err and err.count("\n") == 1
    assert prepare_import.import_main(argv + [f"--output={tmp_path / 'o' / 'd'}", "--on_bad_record=skip"]) == 0
    out = capsys.readouterr().out
    assert "wrote 1 record(s) to 1 shard(s)" in out and "  skipped bad_units: 1" in out
    assert "  rate_from_flag: 1" in out
    assert prepare_import.import_main(argv + [f"--output={tmp_path / 'o' / 'e'}", "--shard_size_mb=1"]) == 1
    assert "--shard_size_mb is for the single-process import" in capsys.readouterr().err
