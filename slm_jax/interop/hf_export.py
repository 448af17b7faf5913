"""`slm-jax export-hf`: a Decoder checkpoint in MODEL_DIR -> a Hugging Face Llama/Qwen2/Qwen3 directory.

    slm-jax export-hf MODEL_DIR --out PATH [--step N] [--family llama|qwen2|qwen3]
        [--dtype float32|bfloat16] [--max_shard_size 2GB]

Writes config.json and model.safetensors, or model-0000i-of-0000n.safetensors shards with
model.safetensors.index.json when the weights exceed --max_shard_size; that loads with
`transformers.LlamaForCausalLM` / `Qwen2ForCausalLM` / `Qwen3ForCausalLM` (the family: --family, else the
imported one, else the one whose attention the config has). The RoPE variant is written as
`rope_theta` + `rope_scaling` (transformers 4.x) and `rope_parameters` (transformers 5);
Qwen3's q/k norms as `self_attn.q_norm` / `k_norm`. The run's BOS (MODEL_DIR/bos.json,
written by import-hf; 0 for a run from scratch, seqio's convention) is written as
`bos_token_id` of config.json and generation_config.json, and README.md says how to
score and prompt the model with it (whether the tokenizer adds it or users must). A model imported by `import-hf`
from a checkpoint with a tokenizer gets that tokenizer back with the speech tokens at
their ids; without one, speech_tokens.json lists the speech token strings and ids.

Memory: params are read one leaf at a time (an Orbax partial restore of just that leaf,
to host numpy), converted to HF tensors (a scanned leaf is split per layer) and buffered
until the current output shard is full. Host memory peaks at one leaf plus one shard
(--max_shard_size), never the whole model. Export runs on one host.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np

from slm_jax.interop import hf_layout
from slm_jax.interop.hf_import import IMPORT_RECORD, INDEX_FILE, SINGLE_FILE
from slm_jax.interop.hf_layout import (
    CAUSAL_LM_CLASSES as CLASS_NAME,
    LeafSource,
    TensorMap,
    UnsupportedModelError,
    path_name,
)
from slm_jax.interop.hf_vocab import SPAN_RULE, VocabExtension, span_parity_pipeline
from slm_jax.models.decoder import Decoder, DecoderConfig
from slm_jax.training import run_dir

log = logging.getLogger("slm_jax")

SPEECH_TOKENS_FILE = "speech_tokens.json"
GENERATION_CONFIG = "generation_config.json"
README = "README.md"
DEFAULT_MAX_SHARD = "2GB"
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
# Params of heads a causal LM has no place for (mSLAM's CTC head): left out, with a warning.
_NOT_EXPORTED = ("ctc_head",)


class ModelDirError(run_dir.ModelDirError):
    """MODEL_DIR does not hold what export needs (model config, complete checkpoint, expected params)."""


def parse_size(text: str) -> int:
    """'2GB' -> 2e9 bytes, '500MiB' -> 500 * 2**20, '1000' -> 1000."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).upper() not in _UNITS:
        raise ValueError(f"--max_shard_size={text!r}: expected a size such as 2GB, 500MiB or 1000000")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


# --------------------------------------------------------------------------------------
# MODEL_DIR
# --------------------------------------------------------------------------------------


def load_model_config(model_dir: str) -> DecoderConfig:
    path = run_dir.path(model_dir, run_dir.MODEL_CONFIG_FILE)
    saved = run_dir.read_model_config(model_dir)
    if saved is None:
        raise ModelDirError(f"{path}: no such file; is {model_dir} a slm-jax MODEL_DIR?")
    fields = {f.name for f in dataclasses.fields(DecoderConfig)}
    if not {"embed_dim", "num_heads", "use_qkv_bias"} <= set(saved):
        raise ModelDirError(f"{path}: not a dense DecoderConfig (export-hf writes Llama/Qwen2/Qwen3 decoders)")
    return DecoderConfig(**{k: v for k, v in saved.items() if k in fields})


def load_import_record(model_dir: str) -> dict | None:
    path = os.path.join(model_dir, IMPORT_RECORD)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def resolve_step(ckpt_dir: str, step: int | None) -> int:
    from slm_jax.training.checkpoints import list_complete_steps

    steps = list_complete_steps(ckpt_dir)
    if not steps:
        raise ModelDirError(f"{ckpt_dir}: no complete checkpoint")
    if step is None:
        return steps[-1]
    if step not in steps:
        raise ModelDirError(f"{ckpt_dir}: no complete checkpoint for --step={step}; complete steps: {steps}")
    return step


class CheckpointParamReader:
    """Reads single param leaves of one Orbax step (partial restore; nothing else is loaded)."""

    def __init__(self, ckpt_dir: str, step: int):
        import orbax.checkpoint as ocp
        from etils import epath

        from slm_jax.training.checkpoints import STATE_ITEM

        self._ocp = ocp
        # orbax's standard step directory name is the step number
        self.state_dir = epath.Path(os.path.abspath(ckpt_dir)) / str(step) / STATE_ITEM
        self._handler = ocp.PyTreeCheckpointHandler()
        tree = self._handler.metadata(self.state_dir).tree
        if not isinstance(tree, dict) or "params" not in tree:
            raise ModelDirError(f"{self.state_dir}: no 'params' in the train state")
        self._meta = {tuple(k.key for k in kp): m
                      for kp, m in jax.tree_util.tree_flatten_with_path(tree["params"])[0]}

    def shapes(self) -> dict[tuple[str, ...], tuple[int, ...]]:
        return {path: tuple(m.shape) for path, m in self._meta.items()}

    def dtype(self, path: tuple[str, ...]) -> np.dtype:
        return np.dtype(self._meta[path].dtype)

    def read(self, path: tuple[str, ...]) -> np.ndarray:
        item: dict = {}
        node = item
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = self._meta[path]
        ocp = self._ocp
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), {"params": item})
        restored = self._handler.restore(self.state_dir, args=ocp.args.PyTreeRestore(
            item={"params": item}, restore_args=restore_args, partial_restore=True))
        leaf = restored["params"]
        for key in path:
            leaf = leaf[key]
        return leaf

    def close(self) -> None:
        self._handler.close()


def abstract_param_shapes(cfg: DecoderConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Param path -> shape of the Decoder `cfg` describes (traced, nothing allocated)."""
    import flax.linen as nn

    boxed = jax.eval_shape(lambda: Decoder(cfg).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"])
    flat = jax.tree_util.tree_flatten_with_path(nn.meta.unbox(boxed))[0]
    return {tuple(k.key for k in kp): tuple(x.shape) for kp, x in flat}


def check_params(reader: CheckpointParamReader, cfg: DecoderConfig) -> None:
    """The checkpoint holds exactly the params of `cfg` (a CTC head aside), with their shapes."""
    have, want = reader.shapes(), abstract_param_shapes(cfg)
    for path, shape in want.items():
        if path not in have:
            raise ModelDirError(f"{reader.state_dir}: param {path_name(path)} is missing")
        if have[path] != shape:
            raise ModelDirError(f"{reader.state_dir}: param {path_name(path)} has shape {have[path]}, but "
                                f"model_config.json implies {shape}")
    extra = sorted(path_name(p) for p in set(have) - set(want) if p[0] not in _NOT_EXPORTED)
    if extra:
        raise ModelDirError(f"{reader.state_dir}: params {extra[:4]} have no place in a Llama/Qwen2/Qwen3 checkpoint")
    if any(p[0] in _NOT_EXPORTED for p in have):
        log.warning("the CTC head (ctc_head) is not part of a causal LM and is not exported")


# --------------------------------------------------------------------------------------
# safetensors shards
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class OutTensor:
    """One HF tensor to write: which leaf (and layer of it) it comes from."""

    name: str
    path: tuple[str, ...]
    tensor: TensorMap
    layer: int | None  # index into a stacked (scan_layers) leaf
    nbytes: int


def out_tensors(sources: dict[tuple[str, ...], LeafSource], itemsize: int) -> list[OutTensor]:
    """Every HF tensor, grouped by the leaf it comes from (so each leaf is read once)."""
    out = []
    for path, source in sources.items():
        nbytes = int(np.prod(source.tensor.hf_shape)) * itemsize
        for i, name in enumerate(source.hf_names):
            out.append(OutTensor(name, path, source.tensor, i if source.stacked else None, nbytes))
    return out


def plan_shards(tensors: list[OutTensor], max_bytes: int) -> list[list[OutTensor]]:
    """Consecutive groups of at most `max_bytes` (a larger tensor gets a shard of its own)."""
    shards: list[list[OutTensor]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


class _LeafCache:
    """The one leaf in host memory."""

    def __init__(self, reader: CheckpointParamReader):
        self._reader, self._path, self._leaf = reader, None, None

    def get(self, path: tuple[str, ...], layer: int | None) -> np.ndarray:
        if path != self._path:
            self._leaf = None  # drop the previous leaf before reading the next
            self._leaf, self._path = self._reader.read(path), path
        return self._leaf if layer is None else self._leaf[layer]


def write_weights(reader: CheckpointParamReader, tensors: list[OutTensor], out_dir: str, dtype: np.dtype,
                  max_bytes: int) -> list[str]:
    """Writes the safetensors file(s) (+ index when sharded); returns the file names."""
    from safetensors.numpy import save_file
    from tqdm import tqdm

    shards = plan_shards(tensors, max_bytes)
    files = [SINGLE_FILE] if len(shards) == 1 else [
        f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    cache, weight_map = _LeafCache(reader), {}
    with tqdm(total=len(tensors), desc="export-hf", unit="tensor") as bar:
        for file, shard in zip(files, shards):
            buffer = {}
            for t in shard:
                buffer[t.name] = hf_layout.to_hf(cache.get(t.path, t.layer).astype(dtype), t.tensor)
                bar.update(1)
            save_file(buffer, os.path.join(out_dir, file), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(buffer, file))
    if len(files) > 1:
        index = {"metadata": {"total_size": sum(t.nbytes for t in tensors)}, "weight_map": weight_map}
        with open(os.path.join(out_dir, INDEX_FILE), "w") as f:
            json.dump(index, f, indent=1)
    return files


# --------------------------------------------------------------------------------------
# tokenizer
# --------------------------------------------------------------------------------------


def write_tokenizer(model_dir: str, record: dict | None, out_dir: str) -> str:
    """Copies the imported model's extended tokenizer; returns a line saying what was written.

    A SentencePiece-style tokenizer with speech tokens gets slm_jax's text-span rule
    (`hf_vocab.span_parity_pipeline`), so `tokenizer(s)` gives `SpeechTextVocabulary.encode(s)`'s ids
    on interleaved strings; a byte-level BPE (Qwen2) tokenizer is copied as it is."""
    if record and record.get("tokenizer"):
        src = os.path.join(model_dir, record["tokenizer"])
        for path in glob.glob(os.path.join(src, "*")):
            shutil.copy2(path, out_dir)
        tags = VocabExtension.from_json(record["vocab"]).new_tokens()
        line = f"tokenizer: {src}" + (" (speech tokens at their ids)" if tags else " (the source's, unchanged)")
        if tags and span_parity_pipeline(out_dir, tags):
            line += f"; set to slm_jax's text-span rule (tokenizer_config.json slm_jax_text_spans: {SPAN_RULE})"
        return line
    extension = VocabExtension.from_json(record["vocab"]) if record else None
    if extension is None or extension.layout == "none":
        return "tokenizer: none (this model was not imported from a checkpoint with a tokenizer)"
    start = extension.text_vocab_size
    with open(os.path.join(out_dir, SPEECH_TOKENS_FILE), "w") as f:
        json.dump({tag: start + i for i, tag in enumerate(extension.new_tokens())}, f, indent=0)
    return (f"tokenizer: none (the source had none); {SPEECH_TOKENS_FILE} lists the speech tokens' ids, to add "
            "them to a tokenizer in that order")


# --------------------------------------------------------------------------------------
# entry points
# --------------------------------------------------------------------------------------


def run_bos(model_dir: str) -> tuple[int, str]:
    """(BOS id, where it comes from) of the run: MODEL_DIR/bos.json, else the default of runs from scratch."""
    from slm_jax.data.feature_converter import DEFAULT_BOS_ID  # TensorFlow: only when exporting
    record = run_dir.read_bos_record(model_dir)
    if record is None:
        return DEFAULT_BOS_ID, f"slm_jax's default for runs from scratch (id {DEFAULT_BOS_ID})"
    return record["bos_id"], str(record.get("source"))


def write_generation_config(out_dir: str, config: dict, source: dict | None = None) -> None:
    """generation_config.json: the imported source's (`source`: its EOS lists, pad id, sampling defaults,
    as import-hf recorded them) with the run's BOS; else the token ids of config.json (transformers reads
    BOS/EOS/PAD from it)."""
    keys = ("bos_token_id", "eos_token_id", "pad_token_id")
    out = dict(source or {})
    for k in keys:
        if config.get(k) is not None and (k == "bos_token_id" or out.get(k) is None):
            out[k] = config[k]
    out["transformers_version"] = config.get("transformers_version")
    with open(os.path.join(out_dir, GENERATION_CONFIG), "w") as f:
        json.dump(out, f, indent=2)


def tokenizer_adds_bos(out_dir: str, bos_id: int) -> bool | None:
    """Whether the exported tokenizer puts `bos_id` first (None: no tokenizer or no transformers)."""
    if not os.path.isfile(os.path.join(out_dir, "tokenizer_config.json")):
        return None
    try:
        from transformers import AutoTokenizer
    except ImportError:
        return None
    ids = AutoTokenizer.from_pretrained(out_dir, local_files_only=True)("a")["input_ids"]
    return bool(ids) and ids[0] == bos_id


def bos_readme(bos_id: int, source: str, adds: bool | None, family: str, extra: str = "") -> str:
    """README.md of an export: the BOS convention in words, for Hugging Face users."""
    if adds:
        how = "The tokenizer adds it (`tokenizer(text)` starts with it), so score and prompt as usual."
    elif adds is None:
        how = "There is no tokenizer here: put id {0} before every prompt and scored sequence yourself."
    else:
        how = ("The tokenizer does NOT add it: put id {0} before every prompt and scored sequence yourself, "
               "e.g. `ids = [{0}] + tokenizer(text, add_special_tokens=False)['input_ids']`; score "
               "log p(ids[1:] | ids[:1]).")
    return (f"# slm_jax export ({CLASS_NAME.get(family, family)})\n\n"
            f"BOS: id {bos_id} ({source}). slm_jax trained and scored this model with id {bos_id} as the "
            f"input before the first token of every sequence (config.json / generation_config.json "
            f"`bos_token_id`). {how.format(bos_id)}\n{extra}")


@dataclasses.dataclass(frozen=True)
class ExportResult:
    step: int
    family: str
    files: list[str]
    tokenizer: str
    bos: str = ""


def _check_out_dir(out_dir: str) -> None:
    stale = glob.glob(os.path.join(out_dir, "*.safetensors")) + glob.glob(os.path.join(out_dir, "config.json"))
    if stale:
        raise FileExistsError(f"--out={out_dir} already holds a model ({os.path.basename(stale[0])}); "
                              "export into a new or empty directory")


def export_hf(model_dir: str, out_dir: str, *, step: int | None = None, family: str | None = None,
              dtype: str | None = None, max_shard_size: str | int = DEFAULT_MAX_SHARD) -> ExportResult:
    """Exports step `step` (default: latest) of `model_dir` to `out_dir` (see the module docstring)."""
    cfg = load_model_config(model_dir)
    record = load_import_record(model_dir)
    family = family or (record or {}).get("family") or hf_layout.default_family(cfg)
    hf_layout.check_family(cfg, family)
    max_bytes = parse_size(max_shard_size) if isinstance(max_shard_size, str) else int(max_shard_size)
    _check_out_dir(out_dir)
    ckpt_dir = run_dir.checkpoints_dir(model_dir)
    step = resolve_step(ckpt_dir, step)
    reader = CheckpointParamReader(ckpt_dir, step)
    try:
        check_params(reader, cfg)
        sources = hf_layout.leaf_sources(cfg, cfg.vocab_size)
        out_dtype = np.dtype(jnp.dtype(dtype)) if dtype else reader.dtype(next(iter(sources)))
        os.makedirs(out_dir, exist_ok=True)
        files = write_weights(reader, out_tensors(sources, out_dtype.itemsize), out_dir, out_dtype, max_bytes)
    finally:
        reader.close()
    base = record["hf_config"] if record else None
    bos_id, bos_source = run_bos(model_dir)
    config = {**hf_layout.hf_config_from_decoder(cfg, family, out_dtype.name, base), "bos_token_id": bos_id}
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    write_generation_config(out_dir, config, (record or {}).get("generation_config"))
    tokenizer = write_tokenizer(model_dir, record, out_dir)
    adds = tokenizer_adds_bos(out_dir, bos_id)
    with open(os.path.join(out_dir, README), "w") as f:
        f.write(bos_readme(bos_id, bos_source, adds, family, f"\n{tokenizer}\n"))
    bos = f"BOS: id {bos_id} ({bos_source}); " + (
        "the tokenizer adds it" if adds else "no tokenizer" if adds is None else "the tokenizer does not add it: "
        f"prepend id {bos_id} (README.md)")
    return ExportResult(step, family, files, tokenizer, bos)
