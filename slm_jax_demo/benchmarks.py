"""The spoken demo's benchmarks: spoken StoryCloze / TopicCloze in EN, FR, EN->FR, FR->EN and
EN/FR hidden-state alignment, registered with `slm_jax.evaluation.benchmarks` under the
names below and the suite `demo` (with its table). Importing `slm_jax_demo.tasks` (the demo
run files do) registers them.
"""
from __future__ import annotations

from slm_jax.evaluation import benchmarks as bench
from slm_jax_demo.corpus import ensure_spoken_demo_corpus

CLOZE_KINDS = ("ssc", "stc")
LANG_PAIRS = ("en", "fr", "en_fr", "fr_en")
DEMO_CLOZE = tuple(f"{k}_{p}" for k in CLOZE_KINDS for p in LANG_PAIRS)
DEMO_ALIGNMENT = "align_en_fr"
DEMO_SUITE = (*DEMO_CLOZE, DEMO_ALIGNMENT)
SUITE_NAME = "demo"


def format_demo_table(results: dict[str, float]) -> str:
    """sSC / sTC accuracy (%) in EN, FR, EN->FR, FR->EN and the alignment metrics.

    Two lines per row when `results` hold intervals (`<name>/ci_low`, `<name>/ci_high`, as
    `slm-jax eval` adds): the accuracy, then its 95% percentile-bootstrap interval over pairs
    in brackets beneath it. The alignment metrics are means over items and have no interval."""
    col = 14
    header = f"{'':6}" + "".join(f"{c:>{col}}" for c in ("EN", "FR", "EN->FR", "FR->EN"))
    lines = [header]
    any_interval = False
    for kind, label in (("ssc", "sSC"), ("stc", "sTC")):
        names = [f"{kind}_{p}" for p in LANG_PAIRS]
        values = [results.get(n) for n in names]
        lines.append(f"{label:6}" + "".join(f"{'-' if v is None else f'{100 * v:.1f}':>{col}}" for v in values))
        bounds = [(results.get(f"{n}/ci_low"), results.get(f"{n}/ci_high")) for n in names]
        if any(lo is not None and hi is not None for lo, hi in bounds):
            any_interval = True
            cells = ["" if lo is None or hi is None else f"[{100 * lo:.1f}, {100 * hi:.1f}]" for lo, hi in bounds]
            lines.append(f"{'':6}" + "".join(f"{c:>{col}}" for c in cells))
    if any_interval:
        lines.append("accuracy %, beneath it its 95% percentile-bootstrap interval over pairs")
    a = DEMO_ALIGNMENT
    if f"{a}/cos_parallel" in results:
        def with_ci(key):
            lo, hi = results.get(f"{key}/ci_low"), results.get(f"{key}/ci_high")
            return f"{results[key]:.3f}" + ("" if lo is None or hi is None else f" [{lo:.3f}, {hi:.3f}]")
        gap = f", gap {with_ci(f'{a}/cos_gap')}" if f"{a}/cos_gap" in results else ""
        lines.append(f"alignment of parallel EN/FR stories (mean over layers; 95% interval over items): "
                     f"cos parallel {with_ci(f'{a}/cos_parallel')}, cos random {results[f'{a}/cos_random']:.3f}"
                     f"{gap}, R@1 EN->FR {100 * results[f'{a}/r1_en_fr']:.1f}%, "
                     f"FR->EN {100 * results[f'{a}/r1_fr_en']:.1f}%")
    return "\n".join(lines)


def register() -> None:
    for name in DEMO_CLOZE:
        bench.register_cloze(name, f"cloze/{name}.jsonl", root_fn=ensure_spoken_demo_corpus)
    bench.register_alignment(DEMO_ALIGNMENT, "paired/validation-*.tfrecord", root_fn=ensure_spoken_demo_corpus)
    bench.register_suite(SUITE_NAME, DEMO_SUITE, table=format_demo_table)


register()
