"""Latent speech patching (LST, SEEDS.md section 3): a decoder whose global transformer runs
over patches of speech units instead of single units.

Pipeline for input tokens x [b, t] (packed rows, as for the dense `Decoder`):

  1. slots: every input token belongs to one "slot" of the global sequence. Text tokens,
     markers and each segment's BOS are slots of their own; runs of speech units are cut
     into patches (static k units, or the data's word-aligned patch ids). Slot ids are
     consecutive from 0 along the row, -1 on padding (`patch_slots`).
  2. local encoder: a few small transformer layers over unit embeddings, attention
     restricted to the token's own slot (the "windowed" attention of LST).
  3. pooling: each slot's token states -> one latent (mean or learned attention pooling,
     `slm_jax.kernels.patching`), projected to the global width.
  4. global causal transformer over the slots (positions restart per packed segment).
  5. local decoder: target y_t = x_{t+1} belongs to slot g(t) = slot(t) if x_{t+1} is in
     the same slot, else slot(t) + 1. Position t is predicted from the global state of
     slot g(t) - 1 (which has seen only tokens <= t) plus the tokens of slot g(t) before
     the target (causal attention within the positions sharing g). So the units of a
     patch are predicted one by one from the previous patch's latent (teacher-forced in
     training, patch by patch at generation) and a text token, a slot of its own, is
     predicted from the global state of the slot before it.

With patch size 1 every token is its own slot and, with no local layers, identity
projections and no token input to the local decoder, the model IS the dense decoder
(tested). The loss is per target token, so it compares with the dense model's directly.

`global_length` (static) is the number of global slots per row; a row whose data needs
more leaves its tail uncovered: those tokens are reported (`uncovered_tokens`) and get
no loss, never a silent wrong prediction.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from slm_jax import contract
from slm_jax.contract import AXIS_BATCH, AXIS_EMBED, AXIS_LENGTH, AXIS_MLP, MODALITY_SPEECH
from slm_jax.kernels import patching
from slm_jax.models import interface
from slm_jax.kernels.sharding import shard_map_logical
from slm_jax.models.decoder import REMAT_POLICIES, DecoderBlock, DecoderConfig, _ScanBlock, ctc_logits, lm_logits
from slm_jax.models.interface import ModelOutput
from slm_jax.models.layers import DenseGeneral, Embed, RMSNorm

PATCHINGS = ("static", "aligned", "mixed", "curriculum")
POOLINGS = ("mean", "attention")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class LSTConfig:
    """An LST model (gin: `LSTConfig.*`). Validated once, in `__post_init__` (ValueError naming
    the key).

    global_model: the global transformer over slots; also holds the vocabulary, numerics and
      the CTC head size (`DecoderConfig`).
    local_embed_dim: width of the local encoder / decoder, >= 1, a multiple of local_num_heads
      with an even per-head width (RoPE).
    local_mlp_dim: SwiGLU hidden width of the local layers, >= 1.
    local_num_heads: attention heads of the local layers, >= 1.
    local_encoder_layers: local encoder layers (attention within a slot), >= 0.
    local_decoder_layers: local decoder layers, >= 0.
    patching: one of `PATCHINGS`. "static": patch_size units per patch; "aligned": the batch's
      decoder_patch_ids (word patches); "mixed": each row aligned with probability aligned_prob,
      else static; "curriculum": that probability goes linearly from curriculum_start_prob to
      curriculum_end_prob over curriculum_steps (LST: start word-aligned, end static, which
      inference uses).
    patch_size: speech units per static patch, >= 1.
    aligned_prob: probability in [0, 1] ("mixed").
    curriculum_start_prob, curriculum_end_prob: probabilities in [0, 1] ("curriculum").
    curriculum_steps: train steps of the curriculum, >= 1.
    patching_seed: seed of the per-row aligned/static coin (any int).
    pooling: slot pooling, one of `POOLINGS`.
    pooling_impl: `slm_jax.kernels.patching` implementation, one of `patching.IMPLS`.
    global_length: global slots per row, >= 1; None: the sequence length.
    decoder_token_input: the local decoder also sees the token embeddings (off: pure context).
    """

    global_model: DecoderConfig = DecoderConfig()
    local_embed_dim: int = 64
    local_mlp_dim: int = 172
    local_num_heads: int = 4
    local_encoder_layers: int = 1
    local_decoder_layers: int = 1
    patching: str = "static"
    patch_size: int = 4
    aligned_prob: float = 0.5
    curriculum_start_prob: float = 1.0
    curriculum_end_prob: float = 0.0
    curriculum_steps: int = 10000
    patching_seed: int = 0
    pooling: str = "mean"
    pooling_impl: str = "auto"
    global_length: int | None = None
    decoder_token_input: bool = True

    def __post_init__(self):
        if self.patching not in PATCHINGS:
            raise ValueError(f"LSTConfig.patching={self.patching!r}: expected one of {PATCHINGS}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"LSTConfig.pooling={self.pooling!r}: expected one of {POOLINGS}")
        if self.pooling_impl not in patching.IMPLS:
            raise ValueError(f"LSTConfig.pooling_impl={self.pooling_impl!r}: expected one of {patching.IMPLS}")
        if self.patch_size < 1:
            raise ValueError(f"LSTConfig.patch_size={self.patch_size} must be >= 1")
        for name, low in (("local_embed_dim", 1), ("local_mlp_dim", 1), ("local_num_heads", 1),
                          ("local_encoder_layers", 0), ("local_decoder_layers", 0)):
            if getattr(self, name) < low:
                raise ValueError(f"LSTConfig.{name}={getattr(self, name)} must be >= {low}")
        if self.local_embed_dim % self.local_num_heads:
            raise ValueError(f"LSTConfig.local_embed_dim={self.local_embed_dim} must be a multiple of "
                             f"LSTConfig.local_num_heads={self.local_num_heads}")
        if (self.local_embed_dim // self.local_num_heads) % 2:
            raise ValueError(f"LSTConfig.local_embed_dim={self.local_embed_dim} / LSTConfig.local_num_heads="
                             f"{self.local_num_heads} must be an even head width for RoPE")
        for name in ("aligned_prob", "curriculum_start_prob", "curriculum_end_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"LSTConfig.{name}={getattr(self, name)} must be in [0, 1]")
        if self.curriculum_steps < 1:
            raise ValueError(f"LSTConfig.curriculum_steps={self.curriculum_steps} must be >= 1")
        if self.global_length is not None and self.global_length < 1:
            raise ValueError(f"LSTConfig.global_length={self.global_length} must be >= 1 (or None)")

    # what train.py / metrics read from a model config
    @property
    def vocab_size(self) -> int:
        return self.global_model.vocab_size

    @property
    def needs_patch_ids(self) -> bool:
        return self.patching != "static"

    def aligned_probability(self, step):
        """Probability that a row uses word-aligned patches at train step `step`."""
        if self.patching == "aligned":
            return 1.0
        if self.patching == "mixed":
            return self.aligned_prob
        if self.patching == "curriculum":
            frac = jnp.clip(jnp.asarray(step, jnp.float32) / self.curriculum_steps, 0.0, 1.0)
            return self.curriculum_start_prob + frac * (self.curriculum_end_prob - self.curriculum_start_prob)
        return 0.0

    def local_config(self, num_layers: int) -> DecoderConfig:
        g = self.global_model
        return dataclasses.replace(
            g, embed_dim=self.local_embed_dim, mlp_dim=self.local_mlp_dim, num_layers=num_layers,
            num_heads=self.local_num_heads, num_kv_heads=self.local_num_heads, head_dim=None)

    SHAPE_FIELDS = ("local_embed_dim", "local_mlp_dim", "local_num_heads", "local_encoder_layers",
                    "local_decoder_layers", "pooling", "decoder_token_input")
    RECORD_DEFAULTS = DecoderConfig.RECORD_DEFAULTS  # what older model_config.json records lack

    def shape_dict(self) -> dict[str, Any]:
        return {"global_model": self.global_model.shape_dict(), **{f: getattr(self, f) for f in self.SHAPE_FIELDS}}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def num_params(self, include_embeddings: bool = True) -> int:
        g, d = self.global_model, self.local_embed_dim
        total = g.num_params(include_embeddings=False) - g.embed_dim  # global layers (+ its final norm below)
        for layers in (self.local_encoder_layers, self.local_decoder_layers):
            total += self.local_config(layers).num_params(include_embeddings=False)
        total += 2 * d * g.embed_dim + g.embed_dim  # up / down projections, global final norm
        total += d if self.pooling == "attention" else 0
        total += (d + 1) * g.ctc_num_classes - (g.embed_dim + 1) * g.ctc_num_classes  # head on local width
        if include_embeddings:
            total += g.vocab_size * d * (1 if g.tie_embeddings else 2)
        return total

    def flops_per_token(self, sequence_length: int, slots_per_token: float | None = None) -> float:
        """Training FLOPs per token: local layers on every token, the global model on
        `slots_per_token` of a slot per token (default: 1 / patch_size, all speech)."""
        ratio = slots_per_token if slots_per_token is not None else 1.0 / self.patch_size
        g = self.global_model
        glob = g.flops_per_token(max(1, int(sequence_length * ratio))) - 6.0 * g.vocab_size * g.embed_dim
        local = sum(self.local_config(n).flops_per_token(self.patch_size) - 6.0 * g.vocab_size * self.local_embed_dim
                    for n in (self.local_encoder_layers, self.local_decoder_layers))
        return ratio * glob + local + 6.0 * (g.vocab_size * self.local_embed_dim + 2 * self.local_embed_dim * g.embed_dim)


# --- slot layout (plain functions on [b, t] int arrays) ---------------------------------------
def _shift_right(x, fill):
    return jnp.concatenate([jnp.full_like(x[:, :1], fill), x[:, :-1]], axis=1)


def _index_within_runs(starts: jax.Array) -> jax.Array:
    """t - (last t' <= t with starts[t']) along axis 1."""
    t = jnp.broadcast_to(jnp.arange(starts.shape[1]), starts.shape)
    return t - jax.lax.cummax(jnp.where(starts, t, 0), axis=1)


def input_modality(target_modality, segment_ids):
    """Modality of each INPUT token: the previous target's, 0 for the BOS at a segment start."""
    starts = segment_ids != _shift_right(segment_ids, 0)
    return jnp.where(starts, 0, _shift_right(target_modality, 0))


def patch_slots(segment_ids, target_modality, patching: str = "static", patch_size: int = 4,
                target_patch_ids=None, use_aligned=None):
    """int32 [b, t]: the global slot of each input token (consecutive from 0, -1 on padding).

    A slot starts at every segment start and every non-speech token; inside a run of
    speech units, every `patch_size` units (static) or wherever the data's patch id
    changes (aligned: `target_patch_ids` = the batch's `decoder_patch_ids`, shifted here
    to the inputs like the modality). Units without a data patch id (-1: a record with no
    word alignment) fall back to static patches, so they are never pooled whole.
    `patching="mixed"` takes `use_aligned` (bool [b]) to choose per row.
    """
    seg_start = segment_ids != _shift_right(segment_ids, 0)
    speech = input_modality(target_modality, segment_ids) == MODALITY_SPEECH
    run_start = speech & ~(_shift_right(speech, False) & ~seg_start)
    static = _index_within_runs(run_start) % patch_size == 0
    if patching == "static":
        new_patch = static
    elif patching in ("aligned", "mixed"):
        if target_patch_ids is None:
            raise ValueError(f"patch_slots: patching={patching!r} needs the batch's decoder_patch_ids")
        pid = jnp.where(seg_start, -1, _shift_right(target_patch_ids, -1))
        aligned = jnp.where(pid >= 0, pid != _shift_right(pid, -2), static)
        if patching == "aligned":
            new_patch = aligned
        else:
            if use_aligned is None:
                raise ValueError("patch_slots: patching='mixed' needs use_aligned (bool per row)")
            new_patch = jnp.where(use_aligned[:, None], aligned, static)
    else:
        raise ValueError(f"patch_slots: patching={patching!r}, expected static, aligned or mixed")
    boundary = (seg_start | ~speech | run_start | new_patch) & (segment_ids > 0)
    slots = jnp.cumsum(boundary.astype(jnp.int32), axis=1) - 1
    return jnp.where(segment_ids > 0, slots, -1)


def context_slots(slots):
    """Per position t, the slot whose global state predicts target t: slot(t) when x_{t+1}
    starts a new slot (or t is last), else slot(t) - 1. -1 on padding."""
    nxt = jnp.concatenate([slots[:, 1:], jnp.full_like(slots[:, :1], -1)], axis=1)
    ctx = jnp.where(nxt != slots, slots, slots - 1)
    return jnp.where(slots >= 0, ctx, -1)


def slot_segments(slots, segment_ids, num_slots: int):
    """(segment id, position within its segment) of each slot [b, P]; 0, 0 for unused slots."""
    def one(s, seg):
        return jax.ops.segment_max(seg, jnp.where(s >= 0, s, num_slots), num_segments=num_slots + 1)[:num_slots]
    seg = jnp.maximum(jax.vmap(one)(slots, segment_ids), 0)
    pos = _index_within_runs(seg != _shift_right(seg, 0))
    return seg, jnp.where(seg > 0, pos, 0)


def _positions_within(ids):
    return _index_within_runs(ids != _shift_right(ids, -2))


def per_batch_shard(fn, *args):
    """Runs `fn` on each device's rows (`jax.shard_map` over the mesh axes of the logical
    "batch" axis) when a mesh is active: a Pallas kernel is an opaque custom call the SPMD
    partitioner would otherwise run on gathered, replicated inputs. Every arg and the
    output have the batch as their leading axis; the other dims stay whole."""
    def axes(ndim):
        return (AXIS_BATCH,) + (None,) * (ndim - 1)
    return shard_map_logical(fn, args, [axes(a.ndim) for a in args], (AXIS_BATCH,))  # trailing dims whole


# --- the model -----------------------------------------------------------------------------------
def _stack(cfg: DecoderConfig, name: str):
    """cfg.num_layers DecoderBlocks (scanned / remat as the config says), called (x, seg, pos)."""
    block_cls = _ScanBlock if cfg.scan_layers else DecoderBlock
    if cfg.remat_policy != "none":
        block_cls = nn.remat(block_cls, policy=REMAT_POLICIES[cfg.remat_policy], prevent_cse=not cfg.scan_layers)

    def apply(x, seg, pos):
        impl = cfg.resolved_attention_impl(x.shape[1])  # the global and the local stacks alike
        if cfg.scan_layers:
            stack = nn.scan(block_cls, variable_axes={"params": 0}, split_rngs={"params": True},
                            in_axes=(nn.broadcast, nn.broadcast), length=cfg.num_layers,
                            metadata_params={nn.PARTITION_NAME: "layers"})
            return stack(cfg, impl, name=name)(x, seg, pos)[0]
        for i in range(cfg.num_layers):
            x = block_cls(cfg, impl, name=f"{name}_{i}")(x, seg, pos)
        return x
    return apply


class LSTModel(nn.Module):
    """The LST module; `__call__` returns a `ModelOutput` (always with `covered`)."""

    config: LSTConfig

    def _slots(self, segment_ids, modality, patch_ids, step):
        """Slots under the configured patching; `step` None (evaluation, generation): static
        unless the config is purely aligned. Mixed/curriculum draw one coin per row from
        (patching_seed, step), so a resumed run repeats its choices."""
        cfg = self.config
        if cfg.patching == "static" or (step is None and cfg.patching != "aligned"):
            return patch_slots(segment_ids, modality, "static", cfg.patch_size)
        if cfg.patching == "aligned":
            return patch_slots(segment_ids, modality, "aligned", cfg.patch_size, patch_ids)
        key = jax.random.fold_in(jax.random.key(cfg.patching_seed), jnp.asarray(step, jnp.uint32))
        use_aligned = jax.random.bernoulli(key, cfg.aligned_probability(step), (segment_ids.shape[0],))
        return patch_slots(segment_ids, modality, "mixed", cfg.patch_size, patch_ids, use_aligned)

    @nn.compact
    def __call__(self, tokens, segment_ids=None, positions=None, modality=None, patch_ids=None, step=None, *,
                 return_logits: bool = True, return_hidden: bool = False,
                 return_ctc_logits: bool = False) -> ModelOutput:
        """tokens int32 [b, t] (+ segment ids, positions, the TARGET token's modality
        `MODALITY_*` and the batch's `decoder_patch_ids`, all int32 [b, t]; `step` the int32
        train step or None) -> `ModelOutput` with `covered` (bool [b, t], False where the row
        ran out of global slots: see the module docstring), `logits` (fp32 [b, t, vocab];
        `return_logits`), `hidden` (the local decoder's final normed states [b, t,
        local_embed_dim]) and `ctc_logits` (fp32 [b, t, ctc_num_classes] on those states;
        ValueError without a CTC head). Raises ValueError when the patching needs `patch_ids`
        and gets None. At init every configured parameter is created."""
        cfg, g = self.config, self.config.global_model
        dtype, pdtype = jnp.dtype(g.dtype), jnp.dtype(g.param_dtype)
        init = self.is_initializing()
        b, t = tokens.shape
        if segment_ids is None:
            segment_ids = jnp.ones_like(tokens)
        if modality is None:
            modality = jnp.zeros_like(tokens)
        num_slots = cfg.global_length or t

        slots = self._slots(segment_ids, modality, patch_ids, step)
        covered_slots = jnp.where(slots < num_slots, slots, -1)
        slot_seg, slot_pos = slot_segments(covered_slots, segment_ids, num_slots)
        ctx = context_slots(slots)
        covered = (ctx >= 0) & (ctx < num_slots) & (slots < num_slots)

        embed = Embed(g.vocab_size, cfg.local_embed_dim, g.init_std, dtype, pdtype, name="embed")
        x = nn.with_logical_constraint(embed(tokens), (AXIS_BATCH, AXIS_LENGTH, AXIS_EMBED))

        # local encoder: attention within the token's own slot
        h = x
        if cfg.local_encoder_layers:
            h = _stack(cfg.local_config(cfg.local_encoder_layers), "local_encoder")(
                h, covered_slots + 1, _positions_within(covered_slots))
        if cfg.pooling == "attention":
            scores = DenseGeneral((cfg.local_embed_dim,), (1,), (AXIS_EMBED, None), g.init_std, dtype=dtype,
                                  param_dtype=pdtype, name="pool_scores")(h)[..., 0]
            pooled = per_batch_shard(
                lambda v, w, ids: patching.patch_attention_pool(v, w, ids, num_slots, impl=cfg.pooling_impl),
                h, scores, covered_slots)
        else:
            pooled = per_batch_shard(
                lambda v, ids: patching.patch_mean(v, ids, num_slots, impl=cfg.pooling_impl), h, covered_slots)

        # global transformer over slots
        z = DenseGeneral((cfg.local_embed_dim,), (g.embed_dim,), (AXIS_MLP, AXIS_EMBED), g.init_std, dtype=dtype,
                         param_dtype=pdtype, name="up")(pooled.astype(dtype))
        z = nn.with_logical_constraint(z, (AXIS_BATCH, AXIS_LENGTH, AXIS_EMBED))
        z = _stack(g, "global_layers")(z, slot_seg, slot_pos)
        z = RMSNorm(g.norm_eps, dtype, pdtype, name="global_norm")(z)

        # local decoder: the context slot's state (+ the token) -> next-token logits
        context = jnp.take_along_axis(z, jnp.clip(ctx, 0, num_slots - 1)[..., None], axis=1)
        context = jnp.where(covered[..., None], context, 0)
        d = DenseGeneral((g.embed_dim,), (cfg.local_embed_dim,), (AXIS_EMBED, AXIS_MLP), g.init_std, dtype=dtype,
                         param_dtype=pdtype, name="down")(context)
        if cfg.decoder_token_input:
            d = d + x
        group = jnp.where(covered, ctx + 1, 0)
        if cfg.local_decoder_layers:
            d = _stack(cfg.local_config(cfg.local_decoder_layers), "local_decoder")(
                d, group, _positions_within(group))
        d = RMSNorm(g.norm_eps, dtype, pdtype, name="final_norm")(d)
        logits = lm_logits(g, d, embed, dtype, pdtype) if return_logits or init else None
        ctc = None
        if return_ctc_logits or (init and g.ctc_num_classes):  # mSLAM CTC on the local decoder's states
            ctc = ctc_logits(g, d, dtype, pdtype)
        return ModelOutput(logits=logits if return_logits else None, hidden=d if return_hidden else None,
                           ctc_logits=ctc if return_ctc_logits else None, covered=covered)


@interface.register
class LSTFamily(interface.ModelFamily):
    """The `LSTModel`: needs target modalities (and word patch ids when aligned), reports
    coverage, samples patch by patch without a KV cache."""

    config_type = LSTConfig
    module_type = LSTModel
    has_coverage = True
    needs_modality = True

    def dense_config(self) -> DecoderConfig:
        return self.config.global_model

    def batch_features(self, ctc: bool = False) -> tuple[str, ...]:
        keys = super().batch_features(ctc)
        return (*keys, contract.DECODER_PATCH_IDS) if self.config.needs_patch_ids else keys

    def forward(self, module, params, features, *, step=None, logits=True, hidden=False, layer_hidden=False,
                ctc_logits=False) -> ModelOutput:
        """`interface.ModelFamily.forward`; also reads `DECODER_MODALITY` (zeros if absent: no
        speech patches) and, when the patching needs them, `DECODER_PATCH_IDS`."""
        if layer_hidden:
            raise ValueError("LSTModel has no per-layer hidden states (layer_hidden needs the dense Decoder)")
        patch_ids = features.get(contract.DECODER_PATCH_IDS) if self.config.needs_patch_ids else None
        return module.apply({"params": params}, features[contract.DECODER_INPUT_TOKENS],
                            features.get(contract.DECODER_SEGMENT_IDS), features.get(contract.DECODER_POSITIONS),
                            modality=features.get(contract.DECODER_MODALITY), patch_ids=patch_ids, step=step,
                            return_logits=logits, return_hidden=hidden, return_ctc_logits=ctc_logits)

    def restrict_next_token(self, logits, segment_ids, target_modality, n, modality_of_id):
        """Inside a static patch that is not yet full the next token must be a speech unit."""
        slots = patch_slots(segment_ids, target_modality, "static", self.config.patch_size)
        continues = slots[:, n + 1] == slots[:, n]  # next unit would stay in this patch
        speech_ids = modality_of_id == MODALITY_SPEECH
        return jnp.where(continues[:, None] & ~speech_ids[None], -jnp.inf, logits)
