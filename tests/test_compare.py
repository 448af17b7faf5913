"""Uncertainty and run comparison: `evaluation.stats` (percentile bootstrap, paired bootstrap,
McNemar exact), the intervals and tokens `slm-jax eval` records, and `slm-jax compare` on eval
records written as `write_eval_json` writes them (random scores, no model, no training)."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from scipy import stats as scipy_stats

from slm_jax import cli
from slm_jax.cli import compare as compare_cli
from slm_jax.evaluation import benchmarks as bench
from slm_jax.evaluation import results, stats

N_PAIRS = 60


# --- helpers: records in the exact format of `slm-jax eval` ----------------------------------------
def pairs_with_accuracy(rng, n: int, accuracy: float, prefix: str = "p", base=None) -> list[dict]:
    """n pairs whose correct side wins with probability `accuracy` (random scores), ids prefix0..;
    `base` (a list of bools) fixes which pairs are won instead."""
    won = rng.random(n) < accuracy if base is None else np.asarray(base)
    correct = rng.normal(size=n)
    wrong = np.where(won, correct - rng.random(n) - 0.01, correct + rng.random(n) + 0.01)
    return [{"id": f"{prefix}{i}", "correct": float(c), "wrong": float(w)} for i, (c, w) in enumerate(zip(correct, wrong))]


def detailed_result(benchmarks: dict[str, list[dict]], folder: str | None = None, alignment: bool = True) -> dict:
    """What `BenchmarkSuite.run_detailed` returns for these pair lists (+ a folder and alignment)."""
    out = {}
    for name, pairs in benchmarks.items():
        wins = stats.wins_from_scores([p["correct"] for p in pairs], [p["wrong"] for p in pairs])
        out.update({name: float(wins.mean()), f"{name}/num_pairs": len(pairs), f"{name}/pairs": pairs})
        if name == folder:  # a benchmark folder: official score + flat pair mean
            out.update({f"{name}/pair_mean": float(wins.mean()), f"{name}/layout": "swuggy",
                        f"{name}/num_groups": len(pairs) // 2})
            out[name] = float(wins.mean()) + 0.01  # an official by-item mean differs from the flat one
    if alignment:
        out.update({"align/cos_parallel": 0.61, "align/cos_random": 0.12, "align/r1_en_fr": 0.4,
                    "align/r1_fr_en": 0.35, "align/num_items": 8,
                    "align/per_layer": {"cos_parallel": [0.5, 0.61]}})
    return out


def write_metrics_jsonl(model_dir, tokens_by_step: dict[int, int]) -> None:
    """Training's metrics.jsonl: a loss line per step and, at each checkpoint step, the tokens line."""
    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, "metrics.jsonl"), "w") as f:
        for step, tokens in sorted(tokens_by_step.items()):
            f.write(json.dumps({"step": step, "loss": 3.0}) + "\n")
            f.write(json.dumps({"step": step, "tokens/target": tokens, "tokens/target_speech": tokens // 2,
                                "tokens/target_text": tokens - tokens // 2,
                                "tokens/task/demo_units": tokens}) + "\n")


def write_run(model_dir, steps: dict[int, dict[str, list[dict]]], tokens: dict[int, int] | None = None,
              folder: str | None = None, score: str = "mean") -> str:
    """eval/<step>.json for each step, as `slm-jax eval` writes them (intervals + tokens)."""
    model_dir = str(model_dir)
    if tokens is not None:
        write_metrics_jsonl(model_dir, tokens)
    for step, benchmarks in steps.items():
        detailed = detailed_result(benchmarks, folder)
        detailed.update(results.interval_metrics(detailed, resamples=200))
        results.write_eval_json(os.path.join(model_dir, "eval"), step, detailed, bench.EvalOptions(score=score),
                                model_dir, results.interval_settings(200))
    return model_dir


def run_compare(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(["compare", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- stats --------------------------------------------------------------------------------------
def loop_bootstrap(values, resamples, seed):
    """Reference: a plain loop over resamples, resample b = the b-th block of n uniform draws."""
    rng = np.random.default_rng(seed)
    n = len(values)
    means = []
    for _ in range(resamples):
        idx = np.floor(rng.random(n) * n).astype(int)
        means.append(float(np.mean([values[i] for i in idx])))
    return np.array(means)


def test_bootstrap_interval_equals_a_python_loop_and_contains_the_estimate(monkeypatch):
    rng = np.random.default_rng(0)
    wins = stats.wins_from_scores(rng.normal(size=37), rng.normal(size=37))
    wins[:3] = 0.5  # ties count half
    reference = loop_bootstrap(list(wins), 300, seed=5)
    np.testing.assert_allclose(stats.bootstrap_means(wins, 300, seed=5), reference, rtol=1e-12)
    interval = stats.accuracy_interval(wins, 300, seed=5)
    assert (interval.low, interval.high) == pytest.approx(tuple(np.percentile(reference, [2.5, 97.5])), rel=1e-12)
    assert interval.estimate == pytest.approx(wins.mean()) and interval.low <= interval.estimate <= interval.high
    assert interval.high - interval.low > 0.1  # 37 pairs: a wide interval
    monkeypatch.setattr(stats, "_CELLS_PER_BLOCK", 50)  # drawn in other blocks: the same resamples
    np.testing.assert_allclose(stats.bootstrap_means(wins, 300, seed=5), reference, rtol=1e-12)
    assert stats.accuracy_interval(wins, 300, seed=6) != interval  # the seed matters


def test_paired_bootstrap_equals_a_loop_over_both_runs():
    rng = np.random.default_rng(1)
    a, b = (rng.random(41) < 0.6).astype(float), (rng.random(41) < 0.7).astype(float)
    result = stats.compare_paired(a, b, resamples=250, seed=3)
    loop = np.random.default_rng(3)
    diffs = []
    for _ in range(250):
        idx = np.floor(loop.random(41) * 41).astype(int)
        diffs.append(b[idx].mean() - a[idx].mean())  # one resample drives both runs
    diffs, observed = np.array(diffs), b.mean() - a.mean()
    assert result.diff == pytest.approx(observed)
    assert (result.low, result.high) == pytest.approx(tuple(np.percentile(diffs, [2.5, 97.5])))
    extreme = np.abs(diffs - observed) >= abs(observed) - 1e-9  # a tie with the observed |diff| counts
    assert result.p_bootstrap == pytest.approx((1 + np.sum(extreme)) / 251)


@pytest.mark.parametrize("n_a, n_b", [(3, 11), (0, 5), (7, 7), (20, 40), (1, 0)])
def test_mcnemar_exact_p_is_the_binomial_sum_and_scipy_binomtest(n_a, n_b):
    n = n_a + n_b
    direct = min(1.0, 2 * sum(math.comb(n, k) for k in range(min(n_a, n_b) + 1)) / 2 ** n)
    p = stats.mcnemar_exact_p(n_a, n_b)
    assert p == pytest.approx(direct, rel=1e-12)
    assert p == pytest.approx(scipy_stats.binomtest(n_b, n, 0.5).pvalue, rel=1e-12)
    assert stats.mcnemar_exact_p(0, 0) == 1.0


def test_discordant_pairs_count_ties_by_sign():
    a = np.array([1, 1, 0.5, 0, 0.5, 1, 0])
    b = np.array([1, 0.5, 0.5, 1, 0, 0, 0])
    assert stats.discordant_counts(a, b) == (3, 1)  # 1>0.5, 0.5>0, 1>0 favour A; 0<1 favours B
    result = stats.compare_paired(a, b, resamples=100)
    assert result.p_mcnemar == pytest.approx(stats.mcnemar_exact_p(3, 1))


def test_a_run_against_itself_and_a_clearly_better_run():
    rng = np.random.default_rng(2)
    a = (rng.random(200) < 0.5).astype(float)
    same = stats.compare_paired(a, a)
    assert (same.diff, same.low, same.high, same.p_bootstrap, same.p_mcnemar) == (0.0, 0.0, 0.0, 1.0, 1.0)
    better = np.where(rng.random(200) < 0.6, 1.0, a)  # B wins most of A's losses too
    clear = stats.compare_paired(a, better)
    assert clear.diff > 0.2 and clear.low > 0 and clear.p_bootstrap < 0.01 and clear.p_mcnemar < 1e-6
    assert clear.n_a_better == 0 and clear.n_b_better == int((better != a).sum())


def test_pairs_are_matched_by_id_and_different_ids_are_refused():
    a = {"x1": 1.0, "x2": 0.0, "x3": 0.5}
    wa, wb = stats.align_wins("ssc_en", a, {"x3": 1.0, "x1": 0.0, "x2": 0.0})
    assert wa.tolist() == [1.0, 0.0, 0.5] and wb.tolist() == [0.0, 0.0, 1.0]
    with pytest.raises(stats.PairMismatchError, match=r"ssc_en.*only in the first: \['x2'\].*only in the second: \['y9'\]"):
        stats.align_wins("ssc_en", a, {"x1": 1.0, "x3": 0.0, "y9": 1.0})
    with pytest.raises(ValueError, match="repeated"):
        stats.wins_of_record_pairs([{"id": "a", "correct": 1, "wrong": 0}] * 2)


# --- what `slm-jax eval` records and prints ---------------------------------------------------------
def test_tokens_at_step_reads_the_checkpoint_line_of_metrics_jsonl(tmp_path):
    assert results.tokens_at_step(str(tmp_path), 10) is None  # no metrics.jsonl
    write_metrics_jsonl(tmp_path, {10: 1000, 20: 2000})
    assert results.tokens_at_step(str(tmp_path), 20) == {"target": 2000, "target_speech": 1000,
                                                         "target_text": 1000, "task/demo_units": 2000}
    assert results.tokens_at_step(str(tmp_path), 15) is None
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write("{not json\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl:5"):
        results.tokens_at_step(str(tmp_path), 10)


def test_eval_record_holds_intervals_and_tokens_and_tables_show_them(tmp_path):
    rng = np.random.default_rng(3)
    run = write_run(tmp_path / "run", {10: {"ssc_en": pairs_with_accuracy(rng, N_PAIRS, 0.7),
                                            "/b/swuggy": pairs_with_accuracy(rng, N_PAIRS, 0.6)}},
                    tokens={10: 5000}, folder="/b/swuggy")
    record = json.loads(open(os.path.join(run, "eval", "10.json")).read())
    assert record["tokens"] == {"target": 5000, "target_speech": 2500, "target_text": 2500, "task/demo_units": 5000}
    assert record["intervals"]["resamples"] == 200 and "bootstrap" in record["intervals"]["method"]
    m = record["metrics"]
    wins = list(stats.wins_of_record_pairs(record["details"]["ssc_en/pairs"]).values())
    interval = stats.accuracy_interval(wins, 200)
    assert (m["ssc_en/ci_low"], m["ssc_en/ci_high"]) == (interval.low, interval.high)
    assert m["ssc_en/ci_low"] <= m["ssc_en"] <= m["ssc_en/ci_high"]
    # a folder's interval belongs to its flat pair mean; the official score and alignment get none
    assert "/b/swuggy/pair_mean/ci_low" in m and "/b/swuggy/ci_low" not in m
    assert not any(k.startswith("align/") and "ci_" in k for k in m)
    table = bench.format_steps_table({10: m})
    row = next(line for line in table.splitlines() if line.startswith("ssc_en "))
    assert row.split(maxsplit=1)[1].strip() == (f"{100 * m['ssc_en']:.1f} [{100 * m['ssc_en/ci_low']:.1f}, "
                                                f"{100 * m['ssc_en/ci_high']:.1f}]")
    assert "align/cos_parallel" in table and "ci_low" not in table and "bootstrap" in table
    os.remove(os.path.join(run, "metrics.jsonl"))  # tokens unknown: no key
    path = results.write_eval_json(str(tmp_path / "e2"), 10, detailed_result({}), bench.EvalOptions(), run)
    assert "tokens" not in json.loads(open(path).read())


def test_demo_table_shows_each_interval_beneath_its_accuracy():
    from slm_jax_demo import benchmarks as demo
    r = {n: 0.5 + 0.01 * i for i, n in enumerate(demo.DEMO_CLOZE)}
    r.update({f"{n}/ci_low": r[n] - 0.1 for n in demo.DEMO_CLOZE})
    r.update({f"{n}/ci_high": r[n] + 0.1 for n in demo.DEMO_CLOZE})
    lines = demo.format_demo_table(r).splitlines()
    assert lines[0].split() == ["EN", "FR", "EN->FR", "FR->EN"]
    assert lines[1].split() == ["sSC", "50.0", "51.0", "52.0", "53.0"]
    assert lines[2].split()[:2] == ["[40.0,", "60.0]"] and lines[3].split()[0] == "sTC"
    assert "interval" in lines[5]
    assert len(demo.format_demo_table({n: 0.5 for n in demo.DEMO_CLOZE}).splitlines()) == 3  # none: one line each


# --- slm-jax compare ------------------------------------------------------------------------------
def two_runs(tmp_path, tokens_b: int = 10_100, b_accuracy: float | None = None, seed: int = 4):
    """Run A (the reference, 10k tokens at step 20) and run B on the same pair ids."""
    rng = np.random.default_rng(seed)
    a_pairs = pairs_with_accuracy(rng, N_PAIRS, 0.55)
    a_won = [p["correct"] > p["wrong"] for p in a_pairs]
    b_won = a_won if b_accuracy is None else [w or rng.random() < b_accuracy for w in a_won]
    run_a = write_run(tmp_path / "a", {10: {"ssc_en": pairs_with_accuracy(rng, N_PAIRS, 0.5)},
                                       20: {"ssc_en": a_pairs}}, tokens={10: 5000, 20: 10_000})
    run_b = write_run(tmp_path / "b", {20: {"ssc_en": pairs_with_accuracy(rng, N_PAIRS, 0, base=b_won)}},
                      tokens={20: tokens_b})
    return run_a, run_b


def test_compare_a_run_with_itself_writes_json_and_png(tmp_path, capsys):
    run_a, _ = two_runs(tmp_path)
    out = tmp_path / "cmp"
    code, text, err = run_compare(capsys, run_a, run_a, f"--out={out}")
    assert code == 0, err
    result = json.loads((out / "compare.json").read_text())
    c = result["benchmarks"]["ssc_en"]["comparisons"][0]
    assert (c["diff"], c["ci"], c["p_bootstrap"], c["p_mcnemar"]) == (0.0, [0.0, 0.0], 1.0, 1.0)
    assert c["resamples"] == 2000 and c["seed"] == 0 and "McNemar" in c["tests"]["p_mcnemar"]
    assert result["runs"][0] == {**result["runs"][0], "step": 20, "tokens_target": 10_000, "budget": "reference",
                                 "picked_by": "latest", "evaluated_steps": [10, 20]}
    per_run = result["benchmarks"]["ssc_en"]["per_run"][0]
    record = json.loads(open(os.path.join(run_a, "eval", "20.json")).read())
    assert per_run["accuracy"] == record["metrics"]["ssc_en"] and result["benchmarks"]["ssc_en"]["num_pairs"] == N_PAIRS
    assert result["other_metrics"]["align/cos_parallel"] == [0.61, 0.61]
    assert [p["tokens"] for p in result["series"][0]["ssc_en"]] == [5000, 10_000]
    assert (out / "compare.png").stat().st_size > 1000
    assert "10,000" in text and "+0.0 [+0.0, +0.0]" in text and f"ssc_en ({N_PAIRS} pairs)" in text


def test_compare_a_clearly_better_run_gives_small_p(tmp_path, capsys):
    run_a, run_b = two_runs(tmp_path, b_accuracy=0.9)
    code, text, err = run_compare(capsys, run_a, run_b, f"--out={tmp_path / 'cmp'}", "--no_plot")
    assert code == 0, err
    c = json.loads((tmp_path / "cmp" / "compare.json").read_text())["benchmarks"]["ssc_en"]["comparisons"][0]
    assert c["diff"] > 0.25 and c["ci"][0] > 0 and c["p_bootstrap"] < 0.01 and c["p_mcnemar"] < 1e-4
    assert c["n_reference_better"] == 0 and not (tmp_path / "cmp" / "compare.png").exists()
    assert "[2]" in text and "ok" in text


def test_compare_refuses_a_token_budget_mismatch_unless_allowed(tmp_path, capsys):
    run_a, run_b = two_runs(tmp_path, tokens_b=12_000)  # +20% > 2%
    code, _, err = run_compare(capsys, run_a, run_b, f"--out={tmp_path / 'cmp'}", "--no_plot")
    assert code == 2 and "BudgetMismatchError" in err and len(err.strip().splitlines()) == 1
    assert f"{run_a} step 20: 10,000" in err and f"{run_b} step 20: 12,000 (+20.0%)" in err
    assert not (tmp_path / "cmp").exists()
    code, text, _ = run_compare(capsys, run_a, run_b, f"--out={tmp_path / 'cmp'}", "--no_plot",
                                "--allow_budget_mismatch")
    assert code == 0 and "MISMATCH (allowed)" in text
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["runs"][1]["budget"] == "mismatch"
    code, _, _ = run_compare(capsys, run_a, run_b, "--budget_tolerance=0.25", f"--out={tmp_path / 'cmp'}", "--no_plot")
    assert code == 0
    os.remove(os.path.join(run_b, "metrics.jsonl"))  # the record still holds its tokens
    assert run_compare(capsys, run_a, run_b, "--budget_tolerance=0.25", f"--out={tmp_path / 'cmp'}", "--no_plot")[0] == 0


def test_compare_refuses_unknown_tokens_unless_allowed(tmp_path, capsys):
    run_a, _ = two_runs(tmp_path)
    rng = np.random.default_rng(5)
    pairs = json.loads(open(os.path.join(run_a, "eval", "20.json")).read())["details"]["ssc_en/pairs"]
    unknown = write_run(tmp_path / "c", {7: {"ssc_en": pairs_with_accuracy(rng, N_PAIRS, 0, base=[
        p["correct"] > p["wrong"] for p in pairs])}})  # no metrics.jsonl: tokens unknown
    code, _, err = run_compare(capsys, run_a, unknown, "--no_plot", f"--out={tmp_path / 'cmp'}")
    assert code == 2 and f"{unknown} step 7: unknown" in err
    code, text, _ = run_compare(capsys, run_a, unknown, "--no_plot", f"--out={tmp_path / 'cmp'}",
                                "--allow_budget_mismatch")
    assert code == 0 and "UNKNOWN (allowed)" in text


def test_compare_tokens_picks_the_closest_evaluated_step(tmp_path, capsys):
    run_a, run_b = two_runs(tmp_path)
    code, text, err = run_compare(capsys, run_a, "--tokens=6e3", f"--out={tmp_path / 'cmp'}", "--no_plot")
    assert code == 0, err
    assert "(step 10: closest to --tokens)" in text and "5,000" in text
    run = json.loads((tmp_path / "cmp" / "compare.json").read_text())["runs"][0]
    assert (run["step"], run["tokens_target"], run["picked_by"]) == (10, 5000, "tokens")
    assert run_compare(capsys, run_a, "--tokens=9e3", "--no_plot", f"--out={tmp_path / 'cmp'}")[1].count(
        "(step 20: closest to --tokens)") == 1
    code, _, err = run_compare(capsys, run_a, run_b, "--step=10", "--no_plot", f"--out={tmp_path / 'cmp'}")
    assert code == 2 and f"--step=10: {run_b} has no evaluation record" in err and "[20]" in err


def test_compare_refuses_runs_without_records_and_different_pairs(tmp_path, capsys):
    run_a, _ = two_runs(tmp_path)
    os.makedirs(tmp_path / "empty")
    code, _, err = run_compare(capsys, run_a, tmp_path / "empty", "--no_plot")
    assert code == 2 and "no evaluation records" in err and "slm-jax eval" in err and "--all_checkpoints" in err
    other = write_run(tmp_path / "d", {20: {"ssc_en": pairs_with_accuracy(np.random.default_rng(6), N_PAIRS, 0.5,
                                                                           prefix="q")}}, tokens={20: 10_000})
    code, _, err = run_compare(capsys, run_a, other, "--no_plot", f"--out={tmp_path / 'cmp'}")
    assert code == 2 and "PairMismatchError" in err and "ssc_en" in err and "'p0'" in err and "'q0'" in err
    mean_sum = write_run(tmp_path / "e", {20: {"ssc_en": pairs_with_accuracy(np.random.default_rng(6), N_PAIRS,
                                                                              0.5)}}, tokens={20: 10_000}, score="sum")
    code, _, err = run_compare(capsys, run_a, mean_sum, "--no_plot", f"--out={tmp_path / 'cmp'}")
    assert code == 2 and "--score=mean" in err and "--score=sum" in err


def test_compare_is_a_listed_command_with_help(capsys):
    assert cli.COMMANDS["compare"] == ("compare", "main") and "slm-jax compare" in cli.__doc__
    with pytest.raises(SystemExit) as exit_:
        compare_cli.main(["--help"])
    assert exit_.value.code == 0 and "--allow_budget_mismatch" in capsys.readouterr().out


# --- alignment: per-item values, intervals over items, paired comparison -----------------------
def alignment_detailed(rng, n_items: int = 30, shift: float = 0.0) -> dict:
    """An alignment result as `evaluate_alignment` gives it, with per-item values (+ `shift` on cos_parallel)."""
    items = [{"id": f"story{i}", "cos_parallel": float(0.6 + shift + 0.1 * rng.normal()),
              "cos_random": float(0.5 + 0.1 * rng.normal())} for i in range(n_items)]
    cp = float(np.mean([x["cos_parallel"] for x in items]))
    cr = float(np.mean([x["cos_random"] for x in items]))
    return {"align/cos_parallel": cp, "align/cos_random": cr, "align/r1_en_fr": 0.1, "align/r1_fr_en": 0.1,
            "align/num_items": n_items, "align/items": items}


def test_alignment_item_values_average_to_the_summary():
    from slm_jax.evaluation.alignment import alignment_metrics, item_values
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(9, 4, 6)), rng.normal(size=(9, 4, 6))
    summary, per_item = alignment_metrics(a, b), item_values(a, b)
    assert per_item["cos_parallel"].mean() == pytest.approx(summary["cos_parallel"][1:].mean(), abs=1e-12)
    assert per_item["cos_random"].mean() == pytest.approx(summary["cos_random"][1:].mean(), abs=1e-12)
    # item 0's off-diagonal mean, by hand, at layer 1
    unit = lambda x: x / np.linalg.norm(x)  # noqa: E731
    by_hand = np.mean([(unit(a[0, 1]) @ unit(b[j, 1]) + unit(a[j, 1]) @ unit(b[0, 1])) / 2 for j in range(1, 9)])
    layers = [np.mean([(unit(a[0, l]) @ unit(b[j, l]) + unit(a[j, l]) @ unit(b[0, l])) / 2 for j in range(1, 9)])
              for l in range(1, 4)]
    assert per_item["cos_random"][0] == pytest.approx(np.mean(layers), abs=1e-12) and layers[0] == pytest.approx(by_hand)


def test_alignment_gets_intervals_in_the_record_and_a_paired_comparison(tmp_path, capsys):
    rng = np.random.default_rng(5)
    runs = []
    for name, shift in (("base", 0.0), ("inter", 0.08)):
        model_dir = str(tmp_path / name)
        write_metrics_jsonl(model_dir, {10: 10_000})
        detailed = {**detailed_result({"ssc_en": pairs_with_accuracy(rng, N_PAIRS, 0.7)}, alignment=False),
                    **alignment_detailed(np.random.default_rng(7), shift=shift)}
        detailed.update(results.interval_metrics(detailed, resamples=300))
        assert detailed["align/cos_gap"] == pytest.approx(detailed["align/cos_parallel"] - detailed["align/cos_random"])
        low, high = detailed["align/cos_parallel/ci_low"], detailed["align/cos_parallel/ci_high"]
        assert low < detailed["align/cos_parallel"] < high
        assert "[" in bench.format_metric_cell(detailed, "align/cos_parallel")
        assert "%" not in bench.format_metric_cell(detailed, "align/cos_parallel")
        results.write_eval_json(os.path.join(model_dir, "eval"), 10, detailed, bench.EvalOptions(), model_dir,
                                results.interval_settings(300))
        runs.append(model_dir)
    code, text, err = run_compare(capsys, runs[0], runs[1], runs[0], f"--out={tmp_path / 'cmp'}", "--no_plot")
    assert code == 0, err
    result = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    cp = result["alignment"]["align"]["cos_parallel"]
    better, itself = cp["comparisons"]
    assert better["diff"] == pytest.approx(0.08, abs=1e-9) and better["ci"][0] > 0 and better["p_bootstrap"] < 0.01
    assert (itself["diff"], itself["p_bootstrap"]) == (0.0, 1.0)
    assert cp["per_run"][1]["value"] == pytest.approx(cp["per_run"][0]["value"] + 0.08)
    assert "align/cos_parallel" not in result["other_metrics"] and "align/r1_en_fr" in result["other_metrics"]
    assert "align/cos_gap (30 items)" in text and "+0.080" in text


def _write_budget(run_dir, train_tokens: int, capacity: int = 4096) -> None:
    """token_budget.json as `slm-jax train` writes it with TRAIN_TOKENS (the keys compare reads)."""
    with open(os.path.join(run_dir, "token_budget.json"), "w") as f:
        json.dump({"train_tokens": train_tokens, "capacity_tokens_per_step": capacity, "batch_size": 8,
                   "sequence_length": 512, "estimated_steps": 20}, f)


def test_runs_trained_to_the_same_train_tokens_match_beyond_the_tolerance(tmp_path, capsys):
    """Both stopped at the first step reaching TRAIN_TOKENS=9,800: +1,000 of overshoot difference is
    10% (beyond 2%) but less than one step each, so they are matched; a third run whose budget
    differs, or a step that is not where the budget was reached, stays a mismatch."""
    run_a, run_b = two_runs(tmp_path, tokens_b=11_000)
    assert run_compare(capsys, run_a, run_b, "--no_plot", f"--out={tmp_path / 'cmp'}")[0] == 2
    _write_budget(run_a, 9_800)
    _write_budget(run_b, 9_800)
    code, text, err = run_compare(capsys, run_a, run_b, "--no_plot", f"--out={tmp_path / 'cmp'}")
    assert code == 0, err
    assert "ok (same TRAIN_TOKENS)" in text
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["runs"][1]["budget"] == "same_budget"
    _write_budget(run_b, 9_000)  # another budget: 11,000 is past it by more than... still reached, but not 9,800
    assert run_compare(capsys, run_a, run_b, "--no_plot", f"--out={tmp_path / 'cmp'}")[0] == 2
    _write_budget(run_b, 9_800, capacity=1000)  # 11,000 is more than one step past 9,800: not where it stopped
    assert run_compare(capsys, run_a, run_b, "--no_plot", f"--out={tmp_path / 'cmp'}")[0] == 2


def test_compare_names_a_missing_run_directory(tmp_path, capsys):
    run_a, _ = two_runs(tmp_path)
    code, _, err = run_compare(capsys, run_a, str(tmp_path / "nope"), "--no_plot")
    assert code == 2 and f"{tmp_path / 'nope'}: no such run directory" in err


def test_bootstrap_p_at_its_resolution_floor_is_shown_as_a_bound(tmp_path, capsys):
    run_a, run_b = two_runs(tmp_path, b_accuracy=0.99)
    code, text, err = run_compare(capsys, run_a, run_b, "--no_plot", f"--out={tmp_path / 'cmp'}")
    c = json.loads((tmp_path / "cmp" / "compare.json").read_text())["benchmarks"]["ssc_en"]["comparisons"][0]
    assert code == 0 and c["p_bootstrap"] == pytest.approx(1 / 2001)
    assert "<=0.0005" in text
