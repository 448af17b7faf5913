"""What a Hugging Face checkpoint's tokenizer and configs do at a text's edges: BOS and EOS.

BOS (the input before the first token of every sequence; `resolve_bos`): slm_jax trains,
scores and samples an imported model behind the first token its checkpoint was trained
behind, so a sequence's log-likelihood is transformers' `log p(ids | BOS)`:
  1. `--bos_id N` when given;
  2. else the tokenizer's BOS when it adds one (what a Hugging Face user's `tokenizer(text)`
     puts first, whether a flag (`add_bos_token`, Llama 2's `<s>` = 1) or tokenizer.json's
     post-processor (Llama 3's `<|begin_of_text|>`) decides it);
  3. else `bos_token_id` of config.json / generation_config.json (Qwen2.5 / Qwen3 have no BOS:
     their tokenizers add none and their configs name `<|endoftext|>`; SmolLM2's tokenizer
     adds none and its config names `<|endoftext|>` = 0);
  4. else config.json's `eos_token_id` (the document separator).
Rules 3-4 are lm-evaluation-harness's prefix for scoring from a sequence's first token
when a model has no BOS (`prefix_token_id`: BOS, else end-of-text); a Hugging Face user
scores the same numbers by prepending that id. Sources that name different ids are
refused (pass --bos_id). The id goes into model.gin (`run_bos_id.bos_id = N`, read by
the feature converter, the scorer, alignment and generation) and bos.json (checked by
train / eval / generate: `run_dir.check_bos`); export-hf writes it back as config.json's
and generation_config.json's `bos_token_id`.

EOS and the rest (`read_conventions`, recorded in hf_import.json `tokens` and, its ids, in
bos.json): the end-of-sequence ids of config.json, generation_config.json and the
tokenizer (Llama 3 base: `<|end_of_text|>`; Qwen2.5 base: `<|endoftext|>`; Qwen3: `<|im_end|>`
and `<|endoftext|>`; SmolLM2: `<|endoftext|>` = 0), whether `tokenizer(text)` appends one,
the pad id, and whether the tokenizer carries a chat template. slm_jax is chat-free: it
never applies a chat template; training, scoring and generation see token ids only.
"""
from __future__ import annotations

import dataclasses
import json
import os

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")
GENERATION_CONFIG = "generation_config.json"


def has_tokenizer(hf_dir: str) -> bool:
    return any(os.path.isfile(os.path.join(hf_dir, name)) for name in TOKENIZER_FILES)


def _load_tokenizer(hf_dir: str):
    """The checkpoint's transformers tokenizer; None without tokenizer files or transformers."""
    if not has_tokenizer(hf_dir):
        return None
    try:
        from transformers import AutoTokenizer
    except ImportError:
        return None
    return AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)


@dataclasses.dataclass(frozen=True)
class BosConvention:
    """The input before every sequence's first token (module docstring: the rule)."""

    bos_id: int
    source: str  # where it was read, e.g. "tokenizer <s> (add_bos_token=True)"
    tokenizer_adds_bos: bool  # what a Hugging Face user's tokenizer(text) does


class BosConventionError(ValueError):
    """The checkpoint names no BOS, or names different ones; `--bos_id` settles it."""


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from err


def checked_bos_id(value, where: str) -> int:
    from slm_jax.data.feature_converter import checked_bos_id as check  # TensorFlow: only when importing
    return check(value, where)


def _token_id(value, where: str) -> int | None:
    """A config's token id: None, an int, or (generation configs) a list whose first entry counts."""
    if isinstance(value, list):
        value = value[0] if value else None
    return None if value is None else checked_bos_id(value, where)


def tokenizer_bos(hf_dir: str) -> tuple[int | None, bool]:
    """(the tokenizer's BOS id or None, whether `tokenizer(text)` puts it first); (None, False)
    without tokenizer files or transformers."""
    tokenizer = _load_tokenizer(hf_dir)
    if tokenizer is None or tokenizer.bos_token_id is None:
        return None, False
    probe = tokenizer("a")["input_ids"]  # what users get, whatever flag or post-processor decides it
    return int(tokenizer.bos_token_id), bool(probe) and probe[0] == tokenizer.bos_token_id


def resolve_bos(hf_dir: str, hf_config: dict, text_vocab_size: int, bos_id: int | None = None) -> BosConvention:
    """The BOS convention of a HF checkpoint (rule in the module docstring). Raises
    BosConventionError when sources disagree or name none, or the id is outside the text vocabulary."""
    config_path, gen_path = os.path.join(hf_dir, "config.json"), os.path.join(hf_dir, GENERATION_CONFIG)
    tok_id, adds = tokenizer_bos(hf_dir)
    named = {"config.json bos_token_id": _token_id(hf_config.get("bos_token_id"), f"{config_path}: bos_token_id"),
             f"{GENERATION_CONFIG} bos_token_id": _token_id(_read_json(gen_path).get("bos_token_id"),
                                                            f"{gen_path}: bos_token_id")}
    named = {k: v for k, v in named.items() if v is not None}
    if bos_id is not None:
        found = BosConvention(checked_bos_id(bos_id, "--bos_id"), "--bos_id", adds and tok_id == bos_id)
    elif adds:
        found = BosConvention(tok_id, f"tokenizer BOS (added by the tokenizer, id {tok_id})", True)
        named["the tokenizer's BOS"] = tok_id
    elif named:
        key = next(iter(named))
        found = BosConvention(named[key], f"{key} (the tokenizer adds no BOS)", False)
    else:
        eos = _token_id(hf_config.get("eos_token_id"), f"{config_path}: eos_token_id")
        if eos is None:
            raise BosConventionError(f"{hf_dir}: no BOS convention: the tokenizer adds no BOS and config.json / "
                                     f"{GENERATION_CONFIG} have no bos_token_id or eos_token_id; pass --bos_id")
        found = BosConvention(eos, "config.json eos_token_id (no BOS: the end-of-text token, as "
                                   "lm-evaluation-harness prefixes such models)", False)
    if bos_id is None and len(set(named.values())) > 1:
        raise BosConventionError(f"{hf_dir}: the BOS is ambiguous: {named}; pass --bos_id with the first token "
                                 "this model was trained behind")
    if found.bos_id >= text_vocab_size:
        raise BosConventionError(f"{hf_dir}: BOS id {found.bos_id} ({found.source}) is outside the model's "
                                 f"{text_vocab_size} embedding rows")
    return found



def _token_ids(value, where: str) -> list[int]:
    """A config's token id(s): None, an int or a list of ints (Llama 3 Instruct, Qwen3 generation configs)."""
    values = value if isinstance(value, list) else [] if value is None else [value]
    return [checked_bos_id(v, where) for v in values]


@dataclasses.dataclass(frozen=True)
class TokenConventions:
    """A checkpoint's conventions at a text's edges (module docstring), as recorded in the run."""

    bos_id: int  # the run's BOS (resolve_bos)
    bos_source: str
    bos_token: str | None  # its string in the tokenizer (None without one)
    tokenizer_adds_bos: bool  # tokenizer(text) starts with it
    eos_ids: list[int]  # config.json, generation_config.json, then the tokenizer's eos_token; deduplicated
    eos_tokens: list[str | None]  # their strings
    tokenizer_adds_eos: bool  # tokenizer(text) ends with an EOS
    pad_id: int | None  # config.json pad_token_id, else the tokenizer's
    chat_template: bool  # the tokenizer has one (never applied by slm_jax)


def read_conventions(hf_dir: str, hf_config: dict, bos: BosConvention) -> TokenConventions:
    """The conventions of the checkpoint in `hf_dir` (config.json already read as `hf_config`) around
    its resolved BOS. Raises ValueError for a token id that is not an int >= 0 (naming the file and key)."""
    config_path, gen_path = os.path.join(hf_dir, "config.json"), os.path.join(hf_dir, GENERATION_CONFIG)
    tokenizer = _load_tokenizer(hf_dir)
    eos = _token_ids(hf_config.get("eos_token_id"), f"{config_path}: eos_token_id")
    eos += _token_ids(_read_json(gen_path).get("eos_token_id"), f"{gen_path}: eos_token_id")
    pad = _token_ids(hf_config.get("pad_token_id"), f"{config_path}: pad_token_id")
    adds_eos, chat = False, False
    if tokenizer is not None:
        if tokenizer.eos_token_id is not None:
            eos.append(int(tokenizer.eos_token_id))
        probe = tokenizer("a")["input_ids"]
        adds_eos = bool(probe) and probe[-1] in eos
        pad += [int(tokenizer.pad_token_id)] if tokenizer.pad_token_id is not None else []
        chat = getattr(tokenizer, "chat_template", None) is not None
    eos = list(dict.fromkeys(eos))

    def token(i):
        return None if tokenizer is None else tokenizer.convert_ids_to_tokens(i)

    return TokenConventions(bos.bos_id, bos.source, token(bos.bos_id), bos.tokenizer_adds_bos, eos,
                            [token(i) for i in eos], adds_eos, pad[0] if pad else None, chat)
