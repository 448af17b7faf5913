"""`slm-jax import-hf`: a local Hugging Face Llama/Qwen2/Qwen3 checkpoint -> a MODEL_DIR that `slm-jax train` continues.

    slm-jax import-hf PATH --out MODEL_DIR [--vocab_layout none|speech|spiritlm] [--num_units 500]
        [--num_pitch 0] [--num_style 0] [--langs en,fr] [--num_sentinels 0] [--pad_vocab_to 128] [--seed 0]
        [--param_dtype float32] [--no_scan_layers] [--gin_file=RUN.gin --gin.NAME=VALUE ...]

MODEL_DIR receives the train state `{'step': 0, 'params', 'opt_state'}` as Orbax step 0
(written by the run's own `CheckpointManager`, with the optimizer state of the run's
`OptimizerConfig` freshly initialised), `model_config.json` (the compatibility record
train checks), `model.gin` (the DecoderConfig bindings to train with), `hf_import.json`
(source config, vocabulary layout and token conventions, read by export-hf), `bos.json`
(the BOS convention and EOS ids, below) and `tokenizer/` (the source tokenizer with the speech
tokens added at their ids) when PATH has a tokenizer.

BOS and EOS (`slm_jax.interop.hf_conventions`): the run trains, scores and samples behind the
first token the checkpoint was trained behind (`resolve_bos`; the rule is there), written to
model.gin (`run_bos_id.bos_id = N`) and bos.json (checked by train / eval / generate); the
tokenizer's and configs' conventions at a text's edges (BOS added or not, EOS ids, chat
template present but never applied) are recorded in hf_import.json `tokens` and bos.json.
`--gin_file`/`--gin.` flags are the run's: its OptimizerConfig and MeshConfig decide the
optimizer-state layout and the shardings; without them the defaults are used.

Memory: everything is checked from config.json and the safetensors headers before a
weight is read. Then the params are built one leaf at a time: the leaf's HF tensors
(one per layer when layers are scanned) are read from their memory-mapped file,
converted on the host and placed straight into their shards with
`jax.make_array_from_callback`, and the host copy is dropped. Host memory peaks at one
leaf (a scanned leaf holds every layer's tensor of one kind; extending the vocabulary
briefly holds the HF rows, the extended leaf and a d x d covariance); device memory holds
the sharded params and optimizer state, as training does. Every process of a multi-host job runs
the import and places its own shards (each needs the files).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os

import jax
import ml_dtypes  # noqa: F401 - registers bfloat16 with numpy, so safetensors can read bf16 tensors
import numpy as np

from slm_jax.interop import hf_layout
from slm_jax.interop.hf_conventions import (  # noqa: F401 - BOS names re-exported (import-hf's API)
    GENERATION_CONFIG,
    TOKENIZER_FILES,
    BosConvention,
    BosConventionError,
    TokenConventions,
    checked_bos_id,
    has_tokenizer as _has_tokenizer,
    read_conventions,
    resolve_bos,
    tokenizer_bos,
)
from slm_jax.interop.hf_layout import LeafSource, UnsupportedModelError, path_name
from slm_jax.interop.hf_vocab import LAYOUTS, VocabExtension, VocabLayoutError, extend_rows, extend_tokenizer
from slm_jax.models.decoder import DecoderConfig
from slm_jax.training import run_dir

log = logging.getLogger("slm_jax")

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
IMPORT_RECORD = "hf_import.json"
MODEL_GIN = "model.gin"
TOKENIZER_DIR = "tokenizer"
# Tensors that carry nothing the Decoder needs (old checkpoints store RoPE's inverse frequencies).
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
# RoPE fields model.gin binds (every one, so a run gin file's own RoPE settings cannot survive it)
ROPE_BINDINGS = ("rope_theta", "rope_type", "rope_scaling_factor", "rope_low_freq_factor", "rope_high_freq_factor",
                 "rope_original_max_positions")
# The config.json fields a model dictates; the rest of DecoderConfig is the run's choice.
_RUN_FIELDS = ("scan_layers", "param_dtype", "dtype", "remat_policy", "attention_impl", "init_std")


class CheckpointMismatchError(ValueError):
    """A checkpoint's tensors do not match its config.json (missing, misshapen or unexpected tensors)."""


class SafetensorsCheckpoint:
    """The tensors of a local HF checkpoint directory: one `model.safetensors`, or shards listed in
    `model.safetensors.index.json`. Listing and shapes read only headers; `read` loads one tensor."""

    def __init__(self, hf_dir: str):
        self.hf_dir = hf_dir
        self._handles: dict[str, object] = {}
        self.source, self._file_of = self._tensor_files()

    def _tensor_files(self) -> tuple[str, dict[str, str]]:
        index = os.path.join(self.hf_dir, INDEX_FILE)
        if os.path.isfile(index):
            with open(index) as f:
                weight_map = json.load(f).get("weight_map")
            if not isinstance(weight_map, dict):
                raise CheckpointMismatchError(f"{index}: no 'weight_map' object")
            files = {name: os.path.join(self.hf_dir, file) for name, file in weight_map.items()}
            missing = sorted({p for p in files.values() if not os.path.isfile(p)})
            if missing:
                raise FileNotFoundError(f"{index} lists {missing[0]}, which does not exist")
            return index, files
        single = os.path.join(self.hf_dir, SINGLE_FILE)
        if os.path.isfile(single):
            return single, dict.fromkeys(self._open(single).keys(), single)
        raise FileNotFoundError(f"{self.hf_dir}: no {SINGLE_FILE} or {INDEX_FILE}; import-hf reads safetensors "
                                "(convert other formats with transformers' save_pretrained(safe_serialization=True))")

    def _open(self, file: str):
        from safetensors import safe_open
        if file not in self._handles:
            self._handles[file] = safe_open(file, framework="np")
        return self._handles[file]

    @property
    def names(self) -> set[str]:
        return set(self._file_of)

    def where(self, name: str) -> str:
        """The file that holds (or, for a missing tensor, should list) `name`."""
        return self._file_of.get(name, self.source)

    def shape(self, name: str) -> tuple[int, ...]:
        try:
            return tuple(self._open(self._file_of[name]).get_slice(name).get_shape())
        except Exception as err:  # safetensors' own error type; an index can name a tensor its shard lacks
            raise CheckpointMismatchError(f"{self.where(name)}: cannot read tensor {name!r}: {err}") from err

    def read(self, name: str) -> np.ndarray:
        return self._open(self._file_of[name]).get_tensor(name)

    def close(self) -> None:
        self._handles.clear()  # safetensors unmaps a file when its handle is collected


@dataclasses.dataclass
class ImportPlan:
    """Everything decided and checked before a weight is read."""

    hf_dir: str
    family: str
    hf_config: dict
    model_cfg: DecoderConfig
    extension: VocabExtension
    sources: dict[tuple[str, ...], LeafSource]
    checkpoint: SafetensorsCheckpoint
    bos: BosConvention
    tokens: TokenConventions


def _weight_prefix(names: set[str]) -> str:
    """'model.' for *ForCausalLM checkpoints, '' for a bare LlamaModel/Qwen2Model."""
    return "" if "model.embed_tokens.weight" not in names and "embed_tokens.weight" in names else "model."


def check_tensors(ckpt: SafetensorsCheckpoint, sources: dict[tuple[str, ...], LeafSource]) -> None:
    """Every tensor the Decoder needs exists with its config.json shape, and nothing else is left over."""
    used = set()
    for path, source in sources.items():
        for name in source.hf_names:
            if name not in ckpt.names:
                raise CheckpointMismatchError(f"{ckpt.where(name)}: tensor {name!r} is missing (needed for the "
                                              f"Decoder param {path_name(path)})")
            shape = ckpt.shape(name)
            if shape != source.tensor.hf_shape:
                raise CheckpointMismatchError(f"{ckpt.where(name)}: tensor {name!r} has shape {shape}, but "
                                              f"config.json implies {source.tensor.hf_shape}")
            used.add(name)
    tied = ("embed", "embedding") in sources and ("lm_head", "kernel") not in sources
    left = sorted(n for n in ckpt.names - used
                  if not n.endswith(_IGNORED_SUFFIXES) and not (tied and n == hf_layout.LM_HEAD))
    if left:
        raise CheckpointMismatchError(f"{ckpt.source}: {len(left)} tensor(s) the Decoder has no place for, e.g. "
                                      f"{left[:4]}; config.json does not describe this checkpoint")


def plan_import(hf_dir: str, vocab: dict | None = None, decoder_options: dict | None = None,
                bos_id: int | None = None) -> ImportPlan:
    """Reads config.json, the BOS convention and the safetensors headers and checks them; raises
    before any weight is read.

    `vocab`: VocabExtension.create keyword arguments (layout, num_units, ...); `decoder_options`:
    DecoderConfig fields that are the run's choice (scan_layers, param_dtype, dtype, ...); `bos_id`:
    overrides the checkpoint's BOS (`resolve_bos`).
    """
    hf_config = hf_layout.read_hf_config(hf_dir)
    family, fields = hf_layout.decoder_fields_from_hf(hf_config, os.path.join(hf_dir, "config.json"))
    options = dict(decoder_options or {})
    bad = sorted(set(options) - set(_RUN_FIELDS))
    if bad:
        raise ValueError(f"DecoderConfig fields {bad} come from the HF config.json; only {_RUN_FIELDS} may be set")
    vocab = dict(vocab or {})
    extension = VocabExtension.create(vocab.pop("layout", "none"), fields["vocab_size"], **vocab)
    try:
        model_cfg = DecoderConfig(**{**fields, "vocab_size": extension.vocab_size, "ctc_num_classes": 0, **options})
    except ValueError as err:  # e.g. heads not a multiple of kv heads: say which file's values they are
        raise UnsupportedModelError(f"{os.path.join(hf_dir, 'config.json')}: its values do not make a valid "
                                    f"DecoderConfig: {err}") from None
    checkpoint = SafetensorsCheckpoint(hf_dir)
    sources = hf_layout.leaf_sources(model_cfg, fields["vocab_size"], _weight_prefix(checkpoint.names))
    check_tensors(checkpoint, sources)
    bos = resolve_bos(hf_dir, hf_config, fields["vocab_size"], bos_id)
    tokens = read_conventions(hf_dir, hf_config, bos)
    return ImportPlan(hf_dir, family, hf_config, model_cfg, extension, sources, checkpoint, bos, tokens)


# --------------------------------------------------------------------------------------
# building the params
# --------------------------------------------------------------------------------------


def _host_leaf(plan: ImportPlan, source: LeafSource, shape: tuple[int, ...], dtype, seed: int) -> np.ndarray:
    """One Decoder param leaf on the host, from its HF tensor(s)."""
    tm, ckpt = source.tensor, plan.checkpoint
    if source.stacked:
        out = np.empty(shape, dtype)
        for i, name in enumerate(source.hf_names):
            out[i] = hf_layout.to_param(ckpt.read(name), tm, shape[1:])
        return out
    hf = ckpt.read(source.hf_names[0]).astype(dtype)
    if tm.vocab_rows:  # rows stay in HF's [vocab, embed] layout while new ones are appended
        hf = extend_rows(hf, plan.extension.vocab_size, seed, stream=0 if tm.param[0] == "embed" else 1)
    return hf_layout.to_param(hf, tm, shape)


def _place(host: np.ndarray, sharding) -> jax.Array:
    """A global array straight from a host array: each device copies only its own shard."""
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def load_params(plan: ImportPlan, abstract_params, seed: int = 0):
    """The Decoder params, leaf by leaf, placed with the shardings of `abstract_params`."""
    from tqdm import tqdm

    flat, treedef = jax.tree_util.tree_flatten_with_path(abstract_params)
    leaves = []
    for key_path, abstract in tqdm(flat, desc="import-hf", unit="leaf", disable=jax.process_index() != 0):
        path = tuple(k.key for k in key_path)
        host = _host_leaf(plan, plan.sources[path], abstract.shape, np.dtype(abstract.dtype), seed)
        leaves.append(_place(host, abstract.sharding))
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _check_leaves(plan: ImportPlan, abstract_params) -> None:
    """The Decoder's params and the tensor map cover each other (a guard for Decoder changes)."""
    paths = {tuple(k.key for k in kp) for kp, _ in jax.tree_util.tree_flatten_with_path(abstract_params)[0]}
    if paths != set(plan.sources):
        diff = sorted(map(path_name, paths ^ set(plan.sources)))
        raise NotImplementedError(f"import-hf does not know how to fill Decoder params {diff}")


def _trainer(model_cfg: DecoderConfig, optimizer, mesh_cfg, devices):
    """The run's Trainer, for its state shardings and optimizer (no step is compiled)."""
    from slm_jax.training import partitioning
    from slm_jax.training.trainer import TrainConfig, Trainer

    mesh = partitioning.make_mesh(mesh_cfg, devices)
    rules = mesh_cfg.logical_axis_rules
    # the smallest batch / length the mesh accepts: they only shape the (unused) step
    batch = math.lcm(partitioning.data_parallel_size(mesh, rules), jax.process_count())
    length = partitioning.axis_product(mesh, partitioning.mesh_axes_for("length", rules))
    train_cfg = TrainConfig(gradient_accumulation_steps=1, ctc_weight=0.0)
    return Trainer(model_cfg, optimizer, train_cfg, mesh, rules, total_steps=1, batch_size=batch,
                   sequence_length=length)


# --------------------------------------------------------------------------------------
# files beside the checkpoint
# --------------------------------------------------------------------------------------


def model_gin(cfg: DecoderConfig, source: str, family: str, bos: BosConvention | None = None) -> str:
    """DecoderConfig bindings (and the BOS convention) of an imported model, to pass after the run's own gin file."""
    bindings = {**cfg.shape_dict(), "norm_eps": cfg.norm_eps, **{f: getattr(cfg, f) for f in ROPE_BINDINGS}}
    lines = [f"# DecoderConfig of the Hugging Face {family} model {source} (slm-jax import-hf).",
             "# Pass it after the run's gin file: --gin_file=RUN.gin --gin_file=MODEL_DIR/model.gin"]
    lines += [f"DecoderConfig.{key} = {value!r}" for key, value in bindings.items()]
    if bos is not None:
        lines += [f"# The input before every sequence's first token: {bos.source}.",
                  f"run_bos_id.bos_id = {bos.bos_id}"]
    return "\n".join(lines) + "\n"


def save_tokenizer(hf_dir: str, extension: VocabExtension, out_dir: str) -> bool:
    """The source tokenizer with the speech tokens added at their ids, saved to `out_dir`; False if none."""
    if not _has_tokenizer(hf_dir):
        log.warning("%s has no tokenizer files; export-hf will write no tokenizer", hf_dir)
        return False
    try:
        from transformers import AutoTokenizer
    except ImportError:
        log.warning("transformers is not installed (pip install slm_jax[hf]); the tokenizer of %s is not kept", hf_dir)
        return False
    tokenizer = AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
    if extension.layout != "none":
        extend_tokenizer(tokenizer, extension)
    tokenizer.save_pretrained(out_dir)
    return True


def _check_new_model_dir(model_dir: str) -> None:
    from slm_jax.training.checkpoints import list_complete_steps

    steps = list_complete_steps(run_dir.checkpoints_dir(model_dir))
    if steps or os.path.exists(run_dir.path(model_dir, run_dir.MODEL_CONFIG_FILE)):
        raise FileExistsError(f"--out={model_dir} already holds a model (checkpoint steps {steps}); "
                              "import into a new directory")


def _read_generation_config(hf_dir: str) -> dict | None:
    """The source's generation_config.json (EOS lists, pad id, sampling defaults), for export-hf to write back."""
    path = os.path.join(hf_dir, GENERATION_CONFIG)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as err:
            raise UnsupportedModelError(f"{path}: not valid JSON ({err})") from None


def _write_records(plan: ImportPlan, model_dir: str, seed: int, tokenizer: bool) -> None:
    from slm_jax.training.run_dir import write_run_files

    gin_text = model_gin(plan.model_cfg, plan.hf_dir, plan.family, plan.bos)
    write_run_files(model_dir, plan.model_cfg, gin_text)  # model_config.json: what train checks on resume
    with open(os.path.join(model_dir, MODEL_GIN), "w") as f:
        f.write(gin_text)
    record = {"source": os.path.abspath(plan.hf_dir), "family": plan.family, "hf_config": plan.hf_config,
              "vocab": plan.extension.to_json(), "seed": seed, "tokenizer": TOKENIZER_DIR if tokenizer else None,
              "bos": dataclasses.asdict(plan.bos), "tokens": dataclasses.asdict(plan.tokens),
              "generation_config": _read_generation_config(plan.hf_dir)}
    with open(os.path.join(model_dir, IMPORT_RECORD), "w") as f:
        json.dump(record, f, indent=1)
    run_dir.write_bos_record(model_dir, plan.bos.bos_id, plan.bos.source,
                             {"tokenizer_adds_bos": plan.tokens.tokenizer_adds_bos, "eos_ids": plan.tokens.eos_ids,
                              "tokenizer_adds_eos": plan.tokens.tokenizer_adds_eos})


# --------------------------------------------------------------------------------------
# entry points
# --------------------------------------------------------------------------------------


def import_hf(hf_dir: str, model_dir: str, *, vocab: dict | None = None, seed: int = 0,
              decoder_options: dict | None = None, optimizer=None, mesh=None, devices=None,
              bos_id: int | None = None) -> DecoderConfig:
    """Imports `hf_dir` into `model_dir` (see the module docstring); returns the model's DecoderConfig.

    `optimizer` / `mesh`: the run's OptimizerConfig / MeshConfig (default: gin's or the defaults);
    `bos_id`: overrides the checkpoint's BOS convention (`resolve_bos`).
    """
    from slm_jax.training.checkpoints import CheckpointManager
    from slm_jax.training.optimizer import OptimizerConfig
    from slm_jax.training.partitioning import MeshConfig

    plan = plan_import(hf_dir, vocab, decoder_options, bos_id)
    _check_new_model_dir(model_dir)
    trainer = _trainer(plan.model_cfg, optimizer or OptimizerConfig(), mesh or MeshConfig(), devices)
    abstract = trainer.abstract_state
    _check_leaves(plan, abstract["params"])
    tokenizer = False
    if jax.process_index() == 0:
        os.makedirs(model_dir, exist_ok=True)
        tokenizer = save_tokenizer(hf_dir, plan.extension, os.path.join(model_dir, TOKENIZER_DIR))
    try:
        params = load_params(plan, abstract["params"], seed)
    finally:
        plan.checkpoint.close()
    init_opt = jax.jit(trainer.tx.init, out_shardings=trainer.state_shardings["opt_state"])
    state = {"step": _place(np.zeros((), np.int32), abstract["step"].sharding), "params": params,
             "opt_state": init_opt(params)}
    with CheckpointManager(run_dir.checkpoints_dir(model_dir), save_period=1, max_to_keep=None,
                           async_save=False) as ckpt:
        ckpt.save(0, state, force=True)
    if jax.process_index() == 0:
        _write_records(plan, model_dir, seed, tokenizer)
    return plan.model_cfg
