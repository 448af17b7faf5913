"""Uncertainty of pair-benchmark accuracies and paired comparisons of two runs (numpy + scipy).

A pair benchmark's record (`MODEL_DIR/eval/<step>.json`, `details["<name>/pairs"]`) holds
every pair's id and the scores of its correct and wrong sequence. Everything here starts
from per-pair WINS, the rule of `pair_wins`: 1 when correct scores higher, 0.5 on a
tie, else 0; the accuracy is their mean over pairs.

- `accuracy_interval`: the 95% PERCENTILE BOOTSTRAP interval of the accuracy (Efron &
  Tibshirani 1993, "An Introduction to the Bootstrap", ch. 13): draw `resamples` sets of n
  pairs with replacement, take the accuracy of each, and report the 2.5th and 97.5th
  percentiles (numpy's linear interpolation). The interval is over PAIRS, i.e. about the
  flat pair mean. For a benchmark folder whose official score aggregates otherwise
  (ZeroSpeech sWUGGY / sBLIMP: pairs averaged per item over voices, then over items) the
  interval belongs to the flat mean over pairs, `<name>/pair_mean`, and is labelled so; the
  official by-item score is shown without one.
- `compare_paired`: run B vs run A on the SAME pairs (matched by id, `align_wins`):
  the accuracy difference B - A with its PAIRED bootstrap interval (one resample of pair
  indices drives both runs, so the pairing is kept; Efron & Tibshirani ch. 13/16), the
  two-sided paired-bootstrap p-value (the resampled differences re-centred on 0 as the
  null; p = (1 + #{|d*_b - d| >= |d|}) / (1 + resamples), Davison & Hinkley 1997 eq. 4.11),
  and McNemar's exact test (McNemar 1947, the exact conditional form: under H0 each
  discordant pair favours A or B with probability 1/2, so the count favouring B is
  Binomial(n_discordant, 1/2); two-sided p = min(1, 2 P(X <= min(n_a, n_b)))).

Ties (a win of 0.5) in McNemar's test: a pair is DISCORDANT when the two runs' wins differ,
and it favours the run with the higher win, whatever the size of the difference (1 vs 0,
1 vs 0.5 or 0.5 vs 0 all count as one discordant pair). This is the sign test on per-pair
win differences, which is McNemar's exact test when no score ties. Pairs with equal wins
(both 1, both 0, both 0.5) are concordant and do not enter.

A run compared with itself gives difference 0, a paired-bootstrap p of 1 (every |d*_b - 0|
>= 0) and a McNemar p of 1 (no discordant pair).

Resampling is seeded and vectorised: resample b takes the b-th block of n draws of
`numpy.random.default_rng(seed).random()`, pair index = floor(u * n) (drawn in blocks of rows
so memory stays bounded; the draws do not depend on the block size).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
from scipy import stats as scipy_stats



def pair_wins(correct: np.ndarray, wrong: np.ndarray) -> np.ndarray:
    """float64 [pairs]: 1 where correct scores higher, 0.5 on a tie, 0 where wrong scores higher
    (SEEDS.md "How SLM benchmarks are scored"; slamkit's rule). `cloze` re-exports it."""
    correct, wrong = np.asarray(correct), np.asarray(wrong)
    return np.where(correct > wrong, 1.0, np.where(correct == wrong, 0.5, 0.0))

DEFAULT_RESAMPLES = 2000
DEFAULT_SEED = 0
CONFIDENCE = 0.95
BOOTSTRAP_TEST = "paired percentile bootstrap over pairs (two-sided, resampled differences re-centred on 0)"
MCNEMAR_TEST = "McNemar exact (two-sided binomial on discordant pairs, p=1/2; a 0.5 tie counts by sign)"
_TIE_TOLERANCE = 1e-9  # far below the 0.5/n grid of mean win differences, far above float noise
_CELLS_PER_BLOCK = 1 << 22  # resample rows are drawn in blocks of about this many pair indices


class PairMismatchError(ValueError):
    """Two runs' records of one benchmark do not hold the same pair ids; the message names them."""


@dataclasses.dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap interval [low, high] (same units as the estimate)."""

    estimate: float
    low: float
    high: float


@dataclasses.dataclass(frozen=True)
class PairedComparison:
    """Run B vs run A on the same pairs (`compare_paired`); differences are B - A (fractions)."""

    diff: float
    low: float
    high: float
    p_bootstrap: float
    p_mcnemar: float
    n_a_better: int  # discordant pairs where A's win is higher
    n_b_better: int
    num_pairs: int
    resamples: int
    seed: int


def wins_from_scores(correct: Sequence[float], wrong: Sequence[float]) -> np.ndarray:
    """float64 [pairs] in {0, 0.5, 1}: `pair_wins`, the one rule."""
    return pair_wins(np.asarray(correct, np.float64), np.asarray(wrong, np.float64))


def wins_of_record_pairs(pairs: Sequence[dict[str, Any]]) -> dict[str, float]:
    """pair id -> win, from a record's `<name>/pairs` list (`{"id", "correct", "wrong", ...}`).
    ValueError on a repeated id (pairs are matched by id)."""
    ids = [str(p["id"]) for p in pairs]
    if len(set(ids)) != len(ids):
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"pair ids repeated in one record: {repeated[:5]}")
    wins = wins_from_scores([p["correct"] for p in pairs], [p["wrong"] for p in pairs])
    return dict(zip(ids, wins.tolist()))


def align_wins(benchmark: str, a: dict[str, float], b: dict[str, float], max_shown: int = 5
               ) -> tuple[np.ndarray, np.ndarray]:
    """Two runs' `{pair id: win}` -> float64 [pairs] arrays in one order (`a`'s).
    PairMismatchError naming the benchmark and a few ids only one run has."""
    if a.keys() != b.keys():
        only_a, only_b = sorted(a.keys() - b.keys()), sorted(b.keys() - a.keys())
        raise PairMismatchError(
            f"benchmark {benchmark}: the runs scored different pairs ({len(a)} vs {len(b)} ids); "
            f"only in the first: {only_a[:max_shown]}{' ...' if len(only_a) > max_shown else ''}; "
            f"only in the second: {only_b[:max_shown]}{' ...' if len(only_b) > max_shown else ''} "
            f"(evaluate both with the same benchmark files and --max_pairs)")
    ids = list(a)
    return np.array([a[i] for i in ids], np.float64), np.array([b[i] for i in ids], np.float64)


def bootstrap_means(values: np.ndarray, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> np.ndarray:
    """float64 [resamples]: the mean of `values` [n] over each bootstrap resample of its n
    items (the module docstring's seeded draw). ValueError on an empty array or resamples < 1."""
    values = np.asarray(values, np.float64)
    n = values.shape[0] if values.ndim == 1 else 0
    if n == 0:
        raise ValueError(f"bootstrap: expected a non-empty 1-D array of per-item values, got shape {values.shape}")
    if resamples < 1:
        raise ValueError(f"bootstrap: resamples={resamples} must be >= 1")
    rng = np.random.default_rng(seed)
    rows = max(1, _CELLS_PER_BLOCK // n)
    out = np.empty(resamples, np.float64)
    for start in range(0, resamples, rows):
        k = min(rows, resamples - start)
        idx = (rng.random((k, n)) * n).astype(np.int64)
        out[start:start + k] = values[idx].mean(axis=1)
    return out


def percentile_interval(samples: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """(low, high): the (1-c)/2 and (1+c)/2 percentiles of bootstrap `samples` (Efron & Tibshirani 13.3)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence} must be in (0, 1)")
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(samples, [tail, 100.0 - tail])
    return float(low), float(high)


def accuracy_interval(wins: Sequence[float], resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
                      confidence: float = CONFIDENCE) -> Interval:
    """The accuracy (mean of per-pair wins [pairs]) and its percentile bootstrap interval over pairs."""
    wins = np.asarray(wins, np.float64)
    low, high = percentile_interval(bootstrap_means(wins, resamples, seed), confidence)
    return Interval(float(wins.mean()), low, high)


def mcnemar_exact_p(n_a_better: int, n_b_better: int) -> float:
    """Two-sided exact McNemar p from the discordant counts: min(1, 2 * P(X <= min(n_a, n_b))),
    X ~ Binomial(n_a + n_b, 1/2); 1.0 when there is no discordant pair."""
    if n_a_better < 0 or n_b_better < 0:
        raise ValueError(f"mcnemar: discordant counts must be >= 0, got {n_a_better}, {n_b_better}")
    n = n_a_better + n_b_better
    if n == 0:
        return 1.0
    return float(min(1.0, 2.0 * scipy_stats.binom.cdf(min(n_a_better, n_b_better), n, 0.5)))


def discordant_counts(wins_a: np.ndarray, wins_b: np.ndarray) -> tuple[int, int]:
    """(pairs where A's win is higher, pairs where B's is higher): the module docstring's tie rule."""
    d = np.asarray(wins_b, np.float64) - np.asarray(wins_a, np.float64)
    return int((d < 0).sum()), int((d > 0).sum())


def compare_paired(wins_a: Sequence[float], wins_b: Sequence[float], resamples: int = DEFAULT_RESAMPLES,
                   seed: int = DEFAULT_SEED, confidence: float = CONFIDENCE) -> PairedComparison:
    """Run B vs run A, both float [pairs] wins of the SAME pairs in the same order (`align_wins`)."""
    wins_a, wins_b = np.asarray(wins_a, np.float64), np.asarray(wins_b, np.float64)
    if wins_a.shape != wins_b.shape or wins_a.ndim != 1:
        raise ValueError(f"compare_paired: expected two [pairs] arrays of one shape, got {wins_a.shape}, "
                         f"{wins_b.shape}")
    per_pair = wins_b - wins_a
    diff = float(per_pair.mean())
    samples = bootstrap_means(per_pair, resamples, seed)
    low, high = percentile_interval(samples, confidence)
    # re-centred null; wins differences lie on a grid of 0.5/n, so a boundary within float noise counts as >=
    extreme = np.abs(samples - diff) >= abs(diff) - _TIE_TOLERANCE
    p_boot = float((1 + extreme.sum()) / (1 + resamples))
    n_a, n_b = discordant_counts(wins_a, wins_b)
    return PairedComparison(diff, low, high, p_boot, mcnemar_exact_p(n_a, n_b), n_a, n_b, len(per_pair),
                            resamples, seed)
