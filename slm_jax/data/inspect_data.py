"""`slm-jax data show|stats`: look at what a task or mixture feeds the model.

`show` decodes the first examples with each modality told apart (ANSI colours on a
terminal, SpiritLM-style tags otherwise); `stats` counts tokens per task and modality;
`rates_for_token_shares` turns wanted token shares into mixture rates, the comparison
the cross-lingual paper makes under matched training-token budgets.
"""
from __future__ import annotations

import argparse
import collections
import sys
from typing import Iterable, Mapping

import numpy as np

MODALITY_NAMES = {0: "pad", 1: "text", 2: "speech", 3: "marker"}
_COLOURS = {1: "\033[32m", 2: "\033[36m", 3: "\033[1;35m"}  # text green, speech cyan, markers magenta
_RESET = "\033[0m"


def _modalities(vocab, ids: np.ndarray) -> np.ndarray:
    """Per-token modality; vocabularies without markers (unit-only) are all speech."""
    if hasattr(vocab, "modality_ids"):
        return np.asarray(vocab.modality_ids(ids))
    return np.where(ids > 0, 2, 0)


def _token_strings(vocab, ids: Iterable[int]) -> list[str]:
    """One display string per token: tags for non-text ids, text pieces as decoded."""
    out = []
    for i in ids:
        if hasattr(vocab, "id_to_tag") and hasattr(vocab, "modality_ids") and vocab.modality_ids([i])[0] != 1:
            out.append(vocab.id_to_tag(int(i)))
        else:
            out.append(vocab.decode([int(i)]))
    return out


def render_example(vocab, ids: np.ndarray, colour: bool) -> str:
    """The decoded sequence; with colour, runs of one modality share a colour."""
    ids = np.asarray(ids)
    ids = ids[ids != 0]
    if not colour:
        return vocab.decode(ids.tolist())
    modality = _modalities(vocab, ids)
    pieces = _token_strings(vocab, ids)
    out = []
    for piece, m in zip(pieces, modality):
        out.append(f"{_COLOURS.get(int(m), '')}{piece}{_RESET}")
    return "".join(out)


def example_stats(vocab, ids: np.ndarray) -> dict[str, int]:
    ids = np.asarray(ids)
    ids = ids[ids != 0]
    modality = _modalities(vocab, ids)
    counts = collections.Counter(MODALITY_NAMES[int(m)] for m in modality)
    switches = int(np.sum(modality[1:] != modality[:-1])) if len(modality) else 0
    return {"tokens": int(len(ids)), **counts, "modality_runs": switches + (1 if len(ids) else 0)}


def _provider(name: str):
    import seqio
    try:
        return seqio.get_mixture_or_task(name)
    except ValueError as err:
        raise ValueError(f"{name!r} is not a registered task or mixture (import its module with "
                         f"--module_import=...): {err}") from None


def _examples(task, split: str, sequence_length: int | None, n: int | None, seed: int = 0):
    import seqio  # noqa: F401 - registers ops
    lengths = {"targets": sequence_length} if sequence_length else None
    ds = task.get_dataset(lengths, split=split, shuffle=False, seed=seed, num_epochs=1)
    if n is not None:
        ds = ds.take(n)
    yield from ds.as_numpy_iterator()


def leaf_tasks(name: str):
    """A mixture's tasks (recursively) or the task itself."""
    import seqio
    provider = _provider(name)
    if isinstance(provider, seqio.Mixture):
        return list(provider.tasks)
    return [provider]


def show(name: str, n: int = 3, split: str = "train", sequence_length: int | None = None,
         colour: bool | None = None, out=sys.stdout) -> None:
    colour = out.isatty() if colour is None else colour
    for task in leaf_tasks(name):
        vocab = task.output_features["targets"].vocabulary
        print(f"== {task.name} ({split})", file=out)
        for i, ex in enumerate(_examples(task, split, sequence_length, n)):
            ids = ex["targets"]
            stats = " ".join(f"{k}={v}" for k, v in example_stats(vocab, ids).items())
            ident = ex.get("id", b"")
            ident = ident.decode() if isinstance(ident, bytes) else str(ident)
            print(f"-- [{i}] {ident} {stats}", file=out)
            print(render_example(vocab, ids, colour), file=out)


def stats(name: str, split: str = "train", max_examples: int | None = None,
          sequence_length: int | None = None) -> dict[str, dict[str, float]]:
    """Token counts per task and modality over (up to `max_examples` of) each task."""
    table = {}
    for task in leaf_tasks(name):
        vocab = task.output_features["targets"].vocabulary
        totals = collections.Counter()
        examples = 0
        for ex in _examples(task, split, sequence_length, max_examples):
            totals.update(example_stats(vocab, ex["targets"]))
            examples += 1
        row = {"examples": examples, **totals}
        row["tokens_per_example"] = totals["tokens"] / max(examples, 1)
        table[task.name] = row
    return table


def rates_for_token_shares(tokens_per_example: Mapping[str, float], shares: Mapping[str, float]) -> dict[str, float]:
    """Mixture rates so each task contributes `shares[task]` of the TOKENS (not examples).

    SeqIO samples examples in proportion to rates, so a task whose examples are twice as
    long needs half the rate for the same token share.
    """
    missing = set(shares) - set(tokens_per_example)
    if missing:
        raise ValueError(f"no token statistics for tasks {sorted(missing)}")
    if any(v <= 0 for v in shares.values()):
        raise ValueError(f"token shares must be positive: {dict(shares)}")
    raw = {t: shares[t] / tokens_per_example[t] for t in shares}
    total = sum(raw.values())
    return {t: r / total for t, r in raw.items()}


def data_main(argv) -> int:
    parser = argparse.ArgumentParser(prog="slm-jax data", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_show = sub.add_parser("show", help="decode the first examples of a task/mixture")
    p_show.add_argument("name")
    p_show.add_argument("-n", type=int, default=3)
    p_show.add_argument("--split", default="train")
    p_show.add_argument("--sequence_length", type=int, default=None)
    p_show.add_argument("--colour", choices=["auto", "always", "never"], default="auto")
    p_stats = sub.add_parser("stats", help="token counts per task and modality")
    p_stats.add_argument("name")
    p_stats.add_argument("--split", default="train")
    p_stats.add_argument("--max_examples", type=int, default=None)
    p_stats.add_argument("--sequence_length", type=int, default=None)
    p_stats.add_argument("--token_shares", default=None,
                         help="task=share,... : print mixture rates giving these TOKEN shares (matched budgets)")
    args = parser.parse_args(argv)
    if args.cmd == "show":
        colour = {"auto": None, "always": True, "never": False}[args.colour]
        show(args.name, args.n, args.split, args.sequence_length, colour)
        return 0
    table = stats(args.name, args.split, args.max_examples, args.sequence_length)
    keys = ["examples", "tokens", "tokens_per_example", "speech", "text", "marker", "modality_runs"]
    print("task".ljust(32) + "".join(k.rjust(20) for k in keys))
    for task, row in table.items():
        print(task.ljust(32) + "".join(f"{row.get(k, 0):20,.1f}" if isinstance(row.get(k, 0), float)
                                       else f"{row.get(k, 0):20,d}" for k in keys))
    if args.token_shares:
        try:
            shares = {t: float(v) for t, v in (item.split("=") for item in args.token_shares.split(","))}
        except ValueError:
            raise ValueError(f"--token_shares={args.token_shares!r}: expected task=share,task=share") from None
        rates = rates_for_token_shares({t: r["tokens_per_example"] for t, r in table.items()}, shares)
        print("\nmixture rates for the requested token shares (register_mixture(name, [(task, rate), ...])):")
        for task, rate in rates.items():
            print(f"  ({task!r}, {rate:.6f}),")
    return 0
