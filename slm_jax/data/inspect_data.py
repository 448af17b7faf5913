"""What a task or mixture feeds the model (`slm-jax data show|stats`, slm_jax.cli.data).

`show` decodes the first examples with each modality told apart (ANSI colours on a
terminal, SpiritLM-style tags otherwise); an example whose loss mask leaves tokens out
(prompts, denoising) is shown as its context and its loss-weighted targets, and a
span-corrupted one also lists each sentinel (`<extra_id_N>`) with the span it stands for;
`stats` counts tokens per task and modality;
`rates_for_token_shares` turns wanted token shares into mixture rates, the comparison
the cross-lingual paper makes under matched training-token budgets.
"""
from __future__ import annotations

import collections
from typing import Iterable, Mapping

import numpy as np

from slm_jax import contract

MODALITY_NAMES = contract.MODALITY_NAMES
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


def render_with_loss(vocab, ids: np.ndarray, loss_mask: np.ndarray, colour: bool) -> list[str]:
    """Lines for one example: the whole sequence when every token is a target; else
    `context: ...` (no loss), `targets: ...` (loss) and, when the targets hold sentinels,
    `spans: <extra_id_0> = ... | <extra_id_1> = ...` (what each sentinel of the context stands for)."""
    from slm_jax.data.preprocessors.span_corruption import split_example, spans_of
    ids, loss_mask = np.asarray(ids), np.asarray(loss_mask)
    keep = ids != 0
    ids, loss_mask = ids[keep], loss_mask[keep]
    if loss_mask.all():
        return [render_example(vocab, ids, colour)]
    context, part = split_example(ids, loss_mask)
    lines = [f"context: {render_example(vocab, context, colour)}", f"targets: {render_example(vocab, part, colour)}"]
    if hasattr(vocab, "is_sentinel") and vocab.is_sentinel(part).any():
        spans = spans_of(part, lambda i: bool(vocab.is_sentinel(i)))
        shown = (f"{vocab.id_to_tag(s)} = {_shown(render_example(vocab, np.asarray(span), colour))}" for s, span in spans)
        lines.append("spans:   " + " | ".join(shown))
    return lines


def _shown(rendered: str) -> str:
    """A span as rendered, quoted when it would be invisible (empty, or only SentencePiece's word-start space)."""
    return rendered if rendered and rendered.strip() == rendered else repr(rendered)


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
         colour: bool = False) -> str:
    """The first `n` examples of each task of `name`, decoded (one header line per task,
    one stats line + one rendered line per example); ANSI colours when `colour`."""
    lines = []
    for task in leaf_tasks(name):
        vocab = task.output_features["targets"].vocabulary
        lines.append(f"== {task.name} ({split})")
        count = 0
        for i, ex in enumerate(_examples(task, split, sequence_length, n)):
            count += 1
            ids = ex["targets"]
            stats = " ".join(f"{k}={v}" for k, v in example_stats(vocab, ids).items())
            ident = ex.get("id", b"")
            ident = ident.decode() if isinstance(ident, bytes) else str(ident)
            lines.append(f"-- [{i}] {ident} {stats}")
            lines.extend(render_with_loss(vocab, ids, ex.get("loss_mask", np.ones_like(ids)), colour))
        if not count and n != 0:
            lines.append(empty_task_message(task.name, split))
    return "\n".join(lines)


def empty_task_message(task: str, split: str) -> str:
    """The one wording for a task that yields nothing (as `pipeline.check_not_empty` says it)."""
    return f"task {task!r}, split {split!r}: 0 examples after preprocessing"


def stats(name: str, split: str = "train", max_examples: int | None = None,
          sequence_length: int | None = None) -> dict[str, dict[str, float]]:
    """Token counts per task and modality over (up to `max_examples` of) each task; `loss_tokens`:
    those with loss weight 1 (fewer than `tokens` for prompts and denoising)."""
    table = {}
    for task in leaf_tasks(name):
        vocab = task.output_features["targets"].vocabulary
        checks = _record_checks(task, split, max_examples)  # before reading: a missing field is named here
        totals = collections.Counter()
        examples = 0
        for ex in _examples(task, split, sequence_length, max_examples):
            totals.update(example_stats(vocab, ex["targets"]))
            if "loss_mask" in ex:  # prompts, denoising: the tokens the loss reads
                totals["loss_tokens"] += int(np.sum(np.asarray(ex["loss_mask"])[np.asarray(ex["targets"]) != 0]))
            examples += 1
        row = {"examples": examples, **totals}
        row["tokens_per_example"] = totals["tokens"] / max(examples, 1)
        row.update(checks)
        table[task.name] = row
    return table


def repaired_word_count(records) -> dict[str, int]:
    """{"words", "repaired_words"} over corpus records (dicts with `units`, `unit_rate_hz`,
    `word_start`, `word_end`): words that cover no frame start and so take the frame they lie
    in (`slm_jax.data.preprocessors.common.word_frames`, the rule every task uses)."""
    from slm_jax.data.preprocessors.common import word_frames_np
    words = repaired = 0
    for record in records:
        starts = np.asarray(record["word_start"])
        if not len(starts) or not float(record["unit_rate_hz"]) > 0:
            continue
        _, _, fixed = word_frames_np(starts, record["word_end"], float(record["unit_rate_hz"]), len(record["units"]))
        words += len(starts)
        repaired += int(fixed.sum())
    return {"words": words, "repaired_words": repaired}


def _record_checks(task, split: str, max_examples: int | None) -> dict:
    """Per task: records lacking a field its preprocessors need (skipped or fatal) and repaired
    words, from its raw records (`registration.source_records`); {} for other sources."""
    from slm_jax.data import registration
    if not isinstance(getattr(task, "source", None), registration.TFExampleSource):
        return {}
    out = {}
    missing = registration.missing_field_report(task, split, max_examples)
    if missing and getattr(task, "on_missing_field", "error") == "error":
        field, entry = next(iter(missing["fields"].items()))
        raise ValueError(f"task {task.name!r}: record {entry['first']!r} lacks field {field!r}, which "
                         f"{entry['needed_by']} needs ({entry['records']} such record(s) in {split!r}); import it, "
                         "or register the task with on_missing_field='skip'")
    if missing:
        out["skipped_records"] = missing["records"]
        out["skipped_because"] = "; ".join(f"{e['records']} lack {f!r}" for f, e in missing["fields"].items())
    # only tasks whose preprocessors read word times (a speech-only task over the same corpus repairs nothing)
    uses_word_times = {"word_start", "word_end"} & set(getattr(task, "required_record_fields", None) or ())
    if uses_word_times and {"units", "unit_rate_hz", "word_start", "word_end"} <= set(task.source.feature_description):
        counts = repaired_word_count(registration.source_records(task, split, max_examples))
        out["repaired_words"] = counts["repaired_words"]
    return out


def rates_for_token_shares(tokens_per_example: Mapping[str, float], shares: Mapping[str, float]) -> dict[str, float]:
    """Mixture rates so each task contributes `shares[task]` of the TOKENS (not examples).

    SeqIO samples examples in proportion to rates, so a task whose examples are twice as
    long needs half the rate for the same token share.
    """
    missing = set(shares) - set(tokens_per_example)
    if missing:
        raise ValueError(f"no token statistics for tasks {sorted(missing)}")
    # a task without tokens can take no share of them (any rate gives it 0 tokens)
    empty = sorted(t for t in shares if not tokens_per_example[t] > 0)
    if empty:
        raise ValueError(f"tasks {empty} have 0 tokens per example (0 examples after preprocessing?): "
                         f"no rate gives them a token share; drop them from the shares")
    if any(v <= 0 for v in shares.values()):
        raise ValueError(f"token shares must be positive: {dict(shares)}")
    raw = {t: shares[t] / tokens_per_example[t] for t in shares}
    total = sum(raw.values())
    return {t: r / total for t, r in raw.items()}
