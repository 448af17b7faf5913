"""README's "Your own data" as a new user would run it: a slamkit-layout unit file written by
hand, imported with `slm-jax prepare import`, the README's `my_tasks.py` module verbatim (only
its CORPUS path pointed at that import), and the production run file that names its mixture."""
from __future__ import annotations

import json
import pathlib
import re
import sys

import numpy as np
import pytest

from slm_jax import cli, gin_utils

ROOT = pathlib.Path(__file__).resolve().parent.parent


def readme_module() -> str:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    found = [b for b in blocks if b.startswith("# my_tasks.py")]
    assert len(found) == 1, "README must show exactly one `# my_tasks.py` block"
    return found[0]


def write_slamkit_jsonl(path, records):
    # slamkit's unit dump: one JSON object per line, `file_name`, frame-level `units`, `duration` (s)
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


@pytest.fixture
def my_tasks(tmp_path, monkeypatch):
    rng = np.random.default_rng(7)
    corpus = tmp_path / "corpus"
    records = {}
    for split, n in (("train", 6), ("validation", 3)):
        recs = [{"file_name": f"{split}/utt{i}.wav", "units": rng.integers(0, 500, 50 + 5 * i).tolist(),
                 "duration": (50 + 5 * i) / 25.0} for i in range(n)]
        write_slamkit_jsonl(tmp_path / f"{split}.jsonl", recs)
        assert cli.main(["prepare", "import", "--format=slamkit", f"--input={tmp_path / f'{split}.jsonl'}",
                         f"--output={corpus / split}", "--unit_rate_hz=25"]) == 0
        records[split] = recs
    source = readme_module()
    source, n = re.subn(r'^CORPUS = ".*?"', f'CORPUS = "{corpus}"', source, flags=re.M)
    assert n == 1, "the README module must set CORPUS on one line"
    (tmp_path / "my_tasks.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    sys.modules.pop("my_tasks", None)
    yield records
    sys.modules.pop("my_tasks", None)


def test_readme_task_module_reads_an_imported_slamkit_corpus(my_tasks):
    import seqio

    gin_utils.import_modules(["my_tasks"])
    import my_tasks as module  # noqa: F401 - the file the README shows

    task = seqio.get_mixture_or_task("my_mixture")
    vocab = task.output_features["targets"].vocabulary
    examples = list(task.get_dataset(None, split="validation", shuffle=False, num_epochs=1).as_numpy_iterator())
    assert len(examples) == 3
    for ex, rec in zip(examples, my_tasks["validation"]):
        units = np.asarray(rec["units"])
        dedup = units[np.concatenate([[True], units[1:] != units[:-1]])]
        # [Speech] marker, every deduplicated unit in order, EOS: nothing dropped or reordered
        want = [vocab.speech_marker_id, *(vocab.unit_offset + int(u) for u in dedup), vocab.eos_id]
        assert ex["targets"].tolist() == want


def test_production_run_file_trains_the_readme_mixture_and_base_gin_requires_a_task(my_tasks, capsys):
    gin_utils.parse_gin([str(ROOT / "gin/runs/gpu_h100_1b.gin")], ["MODEL_DIR = 'runs/mine'"], ["my_tasks"])
    from slm_jax.training.train import TrainRun
    run = TrainRun()
    assert run.train_dataset.mixture_or_task_name == "my_mixture"
    assert cli.main(["data", "stats", "my_mixture", "--module_import=my_tasks", "--split=validation"]) == 0
    assert "my_speech_en" in capsys.readouterr().out

    (pathlib.Path("bare.gin")).write_text("include 'models/tiny.gin'\ninclude 'runs/base.gin'\n")
    with pytest.raises(gin_utils.ConfigError, match="MIXTURE_OR_TASK_NAME, MODEL_DIR"):
        gin_utils.parse_gin(["bare.gin"], [])
    assert cli.main(["train", "--gin_file=bare.gin", "--gin.MODEL_DIR='runs/x'"]) == 2
    assert "required gin macros not set: MIXTURE_OR_TASK_NAME" in capsys.readouterr().err
