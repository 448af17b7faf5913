"""Comparing runs from their evaluation records (`slm-jax compare`): no model, no device.

Input: each run's `RUN_DIR/eval/<step>.json` (`results.write_eval_json`); RUN_DIR is the
run's MODEL_DIR. One step per run is compared (`choose_step`): `step=N`, the evaluated step
whose target tokens seen is closest to `tokens=T`, or by default the latest evaluated step.
Tokens seen are the record's `tokens` (written by `slm-jax eval`), else RUN_DIR/metrics.jsonl
at that step (`results.tokens_at_step`), else unknown.

The FIRST run is the reference. Every other run is compared with it on each pair benchmark
that every run's record holds (`<name>/pairs`), pairs matched by id (different id sets are
refused, `stats.PairMismatchError`): accuracy difference (run - reference) with its paired
bootstrap 95% interval and p-value, and McNemar's exact p (`stats.compare_paired`; rules and
sources there). Accuracies are the flat mean over pairs with their percentile bootstrap
interval; a benchmark folder's row is named `<name>/pair_mean` (its official aggregation,
e.g. ZeroSpeech's by-item mean, is listed among the other metrics, without an interval).
Alignment benchmarks whose records kept per-item values (`<name>/items`, `slm-jax eval` since
issue 14) get cos_parallel and cos_gap (= cos_parallel - cos_random, per item) with bootstrap
intervals over items, and a paired bootstrap of the difference with the reference (items matched
by id). Other float metrics every record holds (R@1, sWUGGY in_vocab, ...) are shown as they
are, without an interval.

Token budgets (`budget_statuses`): a run whose target tokens seen differ from the
reference's by more than `tolerance` (relative to the reference) is a MISMATCH, unless both
runs were trained to the same `TRAIN_TOKENS` (their `token_budget.json`) and each compared step
is where its run reached it (at most one step's capacity past the budget): then they are
"same TRAIN_TOKENS" (a run stops at the first step reaching the budget, so runs whose steps
are large against the budget overshoot by different amounts). A run (or a reference) whose
tokens are unknown is UNKNOWN. Both are refused (`BudgetMismatchError`)
unless `allow_budget_mismatch`, in which case they are flagged in the table and the JSON. A
single run has no budget to match. Runs evaluated with a different `--score` or
`--renormalize` are refused (their accuracies measure different things).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from typing import Any, Sequence

from slm_jax.evaluation import results, stats
from slm_jax.training import run_dir as run_dir_lib

log = logging.getLogger("slm_jax")
JSON_FILE = "compare.json"
PLOT_FILE = "compare.png"
DEFAULT_TOLERANCE = 0.02
SCORING_OPTIONS = ("score", "renormalize")  # record options that must agree across compared runs


class CompareError(ValueError):
    """Runs that cannot be compared as asked; the message names the run, step, flag or benchmark."""


class BudgetMismatchError(CompareError):
    """Runs whose tokens seen differ beyond the tolerance (or are unknown) without --allow_budget_mismatch."""


@dataclasses.dataclass(frozen=True)
class RunChoice:
    """One run's compared step. `records`: every evaluated step of the run (step -> record)."""

    run_dir: str
    step: int
    picked_by: str  # "latest" | "step" | "tokens"
    tokens: dict[str, Any] | None
    records: dict[int, dict]
    token_budget: dict[str, Any] | None = None  # the run's token_budget.json, None without TRAIN_TOKENS

    @property
    def record(self) -> dict:
        return self.records[self.step]

    @property
    def target_tokens(self) -> int | None:
        return target_tokens(self.tokens)


def target_tokens(tokens: dict[str, Any] | None) -> int | None:
    """`tokens["target"]` (cumulative target tokens seen), None when unknown."""
    value = (tokens or {}).get("target")
    return None if value is None else int(value)


def load_records(run_dir: str) -> dict[int, dict]:
    """step -> record of `run_dir/eval/<step>.json`; CompareError when there is none."""
    folder = run_dir_lib.eval_dir(run_dir)
    records = results.read_eval_records(folder) if os.path.isdir(folder) else {}
    if not records and not os.path.isdir(run_dir):
        raise CompareError(f"{run_dir}: no such run directory")
    if not records:
        raise CompareError(f"{run_dir}: no evaluation records ({folder}/<step>.json); evaluate it first: "
                           f"slm-jax eval --gin_file=RUN.gin --gin.MODEL_DIR=\"'{run_dir}'\" --benchmarks=... "
                           f"--all_checkpoints")
    return records


def record_tokens(run_dir: str, record: dict) -> dict[str, Any] | None:
    """The record's `tokens`, else RUN_DIR/metrics.jsonl at its step, else None."""
    return record.get("tokens") or results.tokens_at_step(run_dir, int(record["step"]))


def choose_step(run_dir: str, records: dict[int, dict], step: int | None = None,
                tokens: float | None = None) -> RunChoice:
    """The compared step of one run (module docstring). CompareError naming the run and its
    evaluated steps when `step` was not evaluated, or when no evaluated step has tokens seen
    for `tokens`."""
    if step is not None and tokens is not None:
        raise CompareError("--step and --tokens: give one")
    seen = {s: record_tokens(run_dir, records[s]) for s in sorted(records)}
    try:
        budget = run_dir_lib.read_token_budget(run_dir)
    except run_dir_lib.ModelDirError as err:
        raise CompareError(str(err)) from err
    if step is not None:
        if step not in records:
            raise CompareError(f"--step={step}: {run_dir} has no evaluation record of that step; "
                               f"evaluated steps: {sorted(records)}")
        return RunChoice(run_dir, step, "step", seen[step], records, budget)
    if tokens is not None:
        known = {s: target_tokens(t) for s, t in seen.items() if target_tokens(t) is not None}
        if not known:
            raise CompareError(f"--tokens={tokens:g}: no evaluated step of {run_dir} has tokens seen recorded "
                               f"(eval/<step>.json 'tokens' or metrics.jsonl 'tokens/target'); use --step")
        best = min(known, key=lambda s: (abs(known[s] - tokens), s))
        return RunChoice(run_dir, best, "tokens", seen[best], records, budget)
    latest = max(records)
    return RunChoice(run_dir, latest, "latest", seen[latest], records, budget)


def budget_statuses(choices: Sequence[RunChoice], tolerance: float = DEFAULT_TOLERANCE) -> list[dict[str, Any]]:
    """Per run: `{"status": "reference"|"ok"|"same_budget"|"mismatch"|"unknown", "relative":
    (T - T_ref) / T_ref or None}`; the first run is the reference (status "unknown" when its
    tokens are). "same_budget": beyond the tolerance, but both runs stopped at the same
    TRAIN_TOKENS (`reached_budget`)."""
    if tolerance < 0:
        raise CompareError(f"--budget_tolerance={tolerance} must be >= 0")
    ref = choices[0].target_tokens
    out = [{"status": "reference" if ref is not None else "unknown", "relative": 0.0 if ref is not None else None}]
    for choice in choices[1:]:
        t = choice.target_tokens
        if t is None or ref is None:
            out.append({"status": "unknown", "relative": None})
            continue
        if ref == 0:  # a step-0 reference: only another step-0 run matches
            out.append({"status": "ok" if t == 0 else "mismatch", "relative": 0.0 if t == 0 else None})
            continue
        relative = (t - ref) / ref
        status = "ok" if abs(relative) <= tolerance else "mismatch"
        if status == "mismatch" and reached_budget(choices[0]) is not None and \
                reached_budget(choices[0]) == reached_budget(choice):
            status = "same_budget"
        out.append({"status": status, "relative": relative})
    return out


def reached_budget(choice: RunChoice) -> int | None:
    """The run's TRAIN_TOKENS when the compared step is where it reached them: tokens seen at
    or past the budget by less than one step's capacity (batch x length, token_budget.json);
    else None."""
    record, seen = choice.token_budget, choice.target_tokens
    if not record or seen is None or record.get("train_tokens") is None:
        return None
    budget, capacity = int(record["train_tokens"]), record.get("capacity_tokens_per_step")
    if capacity is None:
        capacity = int(record.get("batch_size", 0)) * int(record.get("sequence_length", 0))
    return budget if budget <= seen < budget + capacity else None


def check_budgets(choices: Sequence[RunChoice], tolerance: float = DEFAULT_TOLERANCE,
                  allow_budget_mismatch: bool = False) -> list[dict[str, Any]]:
    """`budget_statuses`; BudgetMismatchError (one message naming every run and its tokens)
    when two or more runs are compared and one is a mismatch or unknown, unless allowed."""
    statuses = budget_statuses(choices, tolerance)
    bad = [s["status"] in ("mismatch", "unknown") for s in statuses]
    if len(choices) > 1 and any(bad) and not allow_budget_mismatch:
        runs = "; ".join(f"{c.run_dir} step {c.step}: {format_tokens(c.target_tokens)}"
                         f"{_relative_text(s)}" for c, s in zip(choices, statuses))
        raise BudgetMismatchError(
            f"the runs saw different numbers of target tokens (beyond --budget_tolerance={tolerance:g} of the "
            f"reference, the first run) or an unknown number: {runs}. Pick comparable steps with --tokens=T or "
            f"--step=N, or pass --allow_budget_mismatch to compare anyway (flagged)")
    return statuses


def check_scoring(choices: Sequence[RunChoice]) -> None:
    """CompareError when the compared records were scored with different SCORING_OPTIONS."""
    seen = {c.run_dir: {k: c.record.get("options", {}).get(k) for k in SCORING_OPTIONS} for c in choices}
    if len({tuple(v.values()) for v in seen.values()}) > 1:
        detail = "; ".join(f"{d}: " + ", ".join(f"--{k}={v}" for k, v in o.items()) for d, o in seen.items())
        raise CompareError(f"the runs were evaluated with different scoring options ({detail}); "
                           f"re-evaluate them with the same --score / --renormalize")


def common_benchmarks(choices: Sequence[RunChoice]) -> tuple[list[str], dict[str, list[int]]]:
    """(pair benchmarks every compared record holds, {benchmark in only some: run indices holding it})."""
    names = [set(results.pair_benchmark_names(c.record["details"])) for c in choices]
    common = sorted(set.intersection(*names))
    partial = {n: [i for i, s in enumerate(names) if n in s] for n in sorted(set.union(*names) - set(common))}
    return common, partial


def _flat_key(record: dict, name: str) -> str:
    return results.flat_accuracy_key(name, record["metrics"])


def _interval(wins: dict[str, float], resamples: int, seed: int) -> dict[str, Any]:
    iv = stats.accuracy_interval(list(wins.values()), resamples, seed)
    return {"accuracy": iv.estimate, "ci": [iv.low, iv.high]}


def compare_benchmark(name: str, choices: Sequence[RunChoice], resamples: int, seed: int) -> dict[str, Any]:
    """One benchmark across runs: per run accuracy + interval, per non-reference run the
    paired comparison with the reference. PairMismatchError when pair ids differ."""
    wins = [stats.wins_of_record_pairs(c.record["details"][f"{name}/pairs"]) for c in choices]
    out: dict[str, Any] = {"label": _flat_key(choices[0].record, name), "num_pairs": len(wins[0]),
                           "per_run": [_interval(w, resamples, seed) for w in wins], "comparisons": []}
    for i, other in enumerate(wins[1:], 1):
        ref_wins, run_wins = stats.align_wins(name, wins[0], other)
        c = stats.compare_paired(ref_wins, run_wins, resamples, seed)
        out["comparisons"].append({
            "run": i, "reference": 0, "diff": c.diff, "ci": [c.low, c.high],
            "p_bootstrap": c.p_bootstrap, "p_mcnemar": c.p_mcnemar,
            "tests": {"p_bootstrap": stats.BOOTSTRAP_TEST, "p_mcnemar": stats.MCNEMAR_TEST},
            "n_reference_better": c.n_a_better, "n_run_better": c.n_b_better, "num_pairs": c.num_pairs,
            "resamples": c.resamples, "seed": c.seed})
    return out


def common_alignments(choices: Sequence[RunChoice]) -> list[str]:
    """Alignment benchmarks with per-item values in every compared record."""
    return sorted(set.intersection(*[set(results.alignment_benchmark_names(c.record["details"])) for c in choices]))


def compare_alignment(name: str, choices: Sequence[RunChoice], resamples: int, seed: int) -> dict[str, Any]:
    """Per `results.ALIGNMENT_ITEM_METRICS` metric: each run's mean over items with its interval, and
    each run vs the reference: the mean per-item difference, its paired bootstrap interval and p."""
    out: dict[str, Any] = {}
    for metric in results.ALIGNMENT_ITEM_METRICS:
        values = [results.alignment_item_values(c.record["details"][f"{name}/items"], metric) for c in choices]
        per_run = [stats.accuracy_interval(list(v.values()), resamples, seed) for v in values]
        entry: dict[str, Any] = {"num_items": len(values[0]),
                                 "per_run": [{"value": iv.estimate, "ci": [iv.low, iv.high]} for iv in per_run],
                                 "comparisons": []}
        for i, other in enumerate(values[1:], 1):
            ref, run = stats.align_wins(f"{name} ({metric})", values[0], other)
            c = stats.compare_paired(ref, run, resamples, seed)
            entry["comparisons"].append({"run": i, "reference": 0, "diff": c.diff, "ci": [c.low, c.high],
                                         "p_bootstrap": c.p_bootstrap, "test": stats.BOOTSTRAP_TEST,
                                         "num_items": c.num_pairs, "resamples": c.resamples, "seed": c.seed})
        out[metric] = entry
    return out


def other_metrics(choices: Sequence[RunChoice], benchmarks: Sequence[str]) -> dict[str, list[float]]:
    """Float metrics every compared record holds, other than the pair accuracies and their
    intervals: metric -> value per run (shown without an interval)."""
    skip = set()
    for c in choices:
        skip |= {_flat_key(c.record, n) for n in benchmarks}
    keys = set.intersection(*[{k for k, v in c.record["metrics"].items() if isinstance(v, float)} for c in choices])
    for name in common_alignments(choices):
        skip |= {f"{name}/{m}" for m in results.ALIGNMENT_ITEM_METRICS}
    keys = sorted(k for k in keys - skip if not k.endswith((f"/{results.CI_LOW}", f"/{results.CI_HIGH}")))
    return {k: [float(c.record["metrics"][k]) for c in choices] for k in keys}


def accuracy_series(choice: RunChoice, benchmarks: Sequence[str], resamples: int, seed: int
                    ) -> dict[str, list[dict[str, Any]]]:
    """Per benchmark, every evaluated step of the run: step, target tokens seen (or None),
    accuracy and its interval (for the plot)."""
    series: dict[str, list[dict[str, Any]]] = {}
    for step in sorted(choice.records):
        record = choice.records[step]
        tokens = target_tokens(record_tokens(choice.run_dir, record))
        for name in benchmarks:
            pairs = record["details"].get(f"{name}/pairs")
            if isinstance(pairs, list) and pairs:
                point = _interval(stats.wins_of_record_pairs(pairs), resamples, seed)
                series.setdefault(name, []).append({"step": step, "tokens": tokens, **point})
    return series


def compare_runs(choices: Sequence[RunChoice], resamples: int = stats.DEFAULT_RESAMPLES,
                 seed: int = stats.DEFAULT_SEED, tolerance: float = DEFAULT_TOLERANCE,
                 allow_budget_mismatch: bool = False) -> dict[str, Any]:
    """Everything `slm-jax compare` shows, JSON-ready (module docstring). Raises
    BudgetMismatchError, CompareError (scoring options, no common benchmark), PairMismatchError."""
    if not choices:
        raise CompareError("no run to compare")
    statuses = check_budgets(choices, tolerance, allow_budget_mismatch)
    check_scoring(choices)
    benchmarks, partial = common_benchmarks(choices)
    if not benchmarks:
        raise CompareError("no pair benchmark is in every compared record: "
                           + "; ".join(f"{c.run_dir} step {c.step}: {results.pair_benchmark_names(c.record['details'])}"
                                       for c in choices))
    return {
        "reference": 0,
        "settings": {"resamples": resamples, "seed": seed, "confidence": stats.CONFIDENCE,
                     "interval": results.INTERVAL_METHOD, "budget_tolerance": tolerance,
                     "allow_budget_mismatch": allow_budget_mismatch},
        "runs": [{"dir": c.run_dir, "step": c.step, "picked_by": c.picked_by, "tokens": c.tokens,
                  "tokens_target": c.target_tokens, "budget": s["status"], "tokens_relative": s["relative"],
                  "evaluated_steps": sorted(c.records), "options": {k: c.record.get("options", {}).get(k)
                                                                    for k in SCORING_OPTIONS}}
                 for c, s in zip(choices, statuses)],
        "benchmarks": {n: compare_benchmark(n, choices, resamples, seed) for n in benchmarks},
        "alignment": {n: compare_alignment(n, choices, resamples, seed) for n in common_alignments(choices)},
        "benchmarks_not_in_every_run": {n: [choices[i].run_dir for i in idx] for n, idx in partial.items()},
        "other_metrics": other_metrics(choices, benchmarks),
        "series": [accuracy_series(c, benchmarks, resamples, seed) for c in choices],
    }


# --- reporting -------------------------------------------------------------------------------
def format_tokens(n: int | None) -> str:
    return "unknown" if n is None else f"{n:,}"


def _relative_text(status: dict[str, Any]) -> str:
    """` (reference)`, ` (+0.6%)` relative to the reference, or nothing when unknown."""
    if status.get("status") == "reference":
        return " (reference)"
    rel = status.get("relative")
    return "" if rel is None else f" ({100 * rel:+.1f}%)"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _p(p: float, floor: float | None = None) -> str:
    """p as text; at the bootstrap's floor 1 / (resamples + 1), "<=" that floor (the test cannot
    resolve smaller p)."""
    if floor is not None and p <= floor * (1 + 1e-9):
        return f"<={floor:.2g}"
    return f"{p:.3g}"


def _grid(rows: list[list[str]]) -> list[str]:
    """Rows of cells -> lines: first column left-aligned, the others right-aligned."""
    widths = [max(len(r[j]) for r in rows) for j in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) if j == 0 else cell.rjust(w) for j, (cell, w) in enumerate(zip(r, widths)))
            .rstrip() for r in rows]


_BUDGET_LABEL = {"reference": "reference", "ok": "ok", "same_budget": "ok (same TRAIN_TOKENS)",
                 "mismatch": "MISMATCH (allowed)",
                 "unknown": "UNKNOWN (allowed)"}
_PICKED = {"latest": "latest evaluated", "step": "--step", "tokens": "closest to --tokens"}


def format_compare_table(result: dict[str, Any]) -> str:
    """The `compare_runs` result as text: runs, one accuracy row per benchmark (a column per
    run), the comparisons with the reference, the other metrics, and how they were computed."""
    runs, names = result["runs"], list(result["benchmarks"])
    floor = 1.0 / (result["settings"]["resamples"] + 1)
    lines = ["runs ([1] is the reference every other run is compared with):"]
    lines += [f"  [{i + 1}] {r['dir']}  (step {r['step']}: {_PICKED[r['picked_by']]})" for i, r in enumerate(runs)]
    single = len(runs) == 1
    rows = [["", *[f"[{i + 1}]" for i in range(len(runs))]],
            ["step", *[str(r["step"]) for r in runs]],
            ["tokens seen (target)", *[format_tokens(r["tokens_target"]) + (
                "" if r["budget"] == "reference" else _relative_text({"relative": r["tokens_relative"]}))
                for r in runs]]]
    if not single:
        rows.append(["token budget", *[_BUDGET_LABEL[r["budget"]] for r in runs]])
    for n in names:
        b = result["benchmarks"][n]
        rows.append([f"{b['label']} ({b['num_pairs']} pairs)",
                     *[f"{_pct(x['accuracy'])} [{_pct(x['ci'][0])}, {_pct(x['ci'][1])}]" for x in b["per_run"]]])
    lines += ["", "accuracy % [95% CI]:", *_grid(rows)]
    if not single:
        rows = [["benchmark", "run", "run - [1] (points) [95% CI]", "p bootstrap", "p McNemar",
                 "pairs [1] better / run better"]]
        for n in names:
            b = result["benchmarks"][n]
            for c in b["comparisons"]:
                rows.append([b["label"], f"[{c['run'] + 1}]",
                             f"{100 * c['diff']:+.1f} [{100 * c['ci'][0]:+.1f}, {100 * c['ci'][1]:+.1f}]",
                             _p(c["p_bootstrap"], floor), _p(c["p_mcnemar"]),
                             f"{c['n_reference_better']} / {c['n_run_better']}"])
        lines += ["", "differences with [1] on the same pairs (matched by id):", *_grid(rows)]
    for name, metrics in result.get("alignment", {}).items():
        rows = [["", *[f"[{i + 1}]" for i in range(len(runs))]]]
        for metric, m in metrics.items():
            rows.append([f"{name}/{metric} ({m['num_items']} items)",
                         *[f"{x['value']:.3f} [{x['ci'][0]:.3f}, {x['ci'][1]:.3f}]" for x in m["per_run"]]])
        for metric, m in metrics.items():
            for c in m["comparisons"]:
                rows.append([f"  [{c['run'] + 1}] - [1] {metric}",
                             *[""] * c["run"], f"{c['diff']:+.3f} [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}] "
                             f"p={_p(c['p_bootstrap'], floor)}", *[""] * (len(runs) - c["run"] - 1)])
        lines += ["", "alignment, mean over items [95% CI]; differences: paired bootstrap over items:", *_grid(rows)]
    if result["other_metrics"]:
        rows = [["", *[f"[{i + 1}]" for i in range(len(runs))]]]
        rows += [[k, *[f"{v:.4f}" for v in vals]] for k, vals in result["other_metrics"].items()]
        lines += ["", "other metrics (no interval: the records keep no per-item values):", *_grid(rows)]
    if result["benchmarks_not_in_every_run"]:
        lines += ["", "not in every run (not compared): " + "; ".join(
            f"{n} ({', '.join(d)})" for n, d in result["benchmarks_not_in_every_run"].items())]
    s = result["settings"]
    lines += ["", f"intervals: 95% {s['interval']}, {s['resamples']} resamples, seed {s['seed']}",
              f"p bootstrap: {stats.BOOTSTRAP_TEST}", f"p McNemar: {stats.MCNEMAR_TEST}"]
    return "\n".join(lines)


def plot_accuracy_vs_tokens(result: dict[str, Any], path: str) -> str | None:
    """PNG: one panel per benchmark, one line per run over all its evaluated steps, accuracy
    (%) vs target tokens seen with 95% interval error bars (x: checkpoint step when no run
    has tokens seen). None (a warning) without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no %s (pip install matplotlib)", path)
        return None
    names = list(result["benchmarks"])
    by_tokens = any(p["tokens"] is not None for s in result["series"] for pts in s.values() for p in pts)
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.8 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        for i, (run, series) in enumerate(zip(result["runs"], result["series"])):
            pts = [p for p in series.get(name, []) if not by_tokens or p["tokens"] is not None]
            if not pts:
                continue
            x = [p["tokens"] if by_tokens else p["step"] for p in pts]
            y = [100 * p["accuracy"] for p in pts]
            err = [[100 * (p["accuracy"] - p["ci"][0]) for p in pts], [100 * (p["ci"][1] - p["accuracy"]) for p in pts]]
            label = f"[{i + 1}] {os.path.basename(run['dir'].rstrip('/'))}"
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=label)
        ax.axhline(50, color="grey", linestyle=":", linewidth=1)
        ax.set_title(result["benchmarks"][name]["label"], fontsize="small")
        ax.set_xlabel("target tokens seen" if by_tokens else "checkpoint step (tokens seen unknown)")
        ax.set_ylabel("accuracy % (95% CI)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_outputs(result: dict[str, Any], out_dir: str, plot: bool = True) -> list[str]:
    """`out_dir/compare.json` (the `compare_runs` result) and `out_dir/compare.png`; the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, JSON_FILE)
    with open(path + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(path + ".tmp", path)
    written = [path]
    if plot:
        png = plot_accuracy_vs_tokens(result, os.path.join(out_dir, PLOT_FILE))
        if png:
            written.append(png)
    return written
