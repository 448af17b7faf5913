"""The batch contract every slm_jax package shares: feature names, modality ids, marker
names and logical axis names.

This module imports nothing (no TensorFlow, no JAX, no flax), so `speech/`, `data/`,
`models/`, `kernels/`, `training/`, `evaluation/`, `interop/`, the CLI and benchmarks all
read the same names from one place instead of keeping copies.

Three stages of a token stream carry features:

* task features (what a SeqIO task's preprocessors emit per example, 1-D, unpacked):
  `targets` int32 token ids, optional `modality` int32 (`MODALITY_*`), `loss_mask` int32
  (1 = the target counts in the loss), `patch_ids` int32 (LST latent patch of each token,
  -1 = none), `ctc_targets` int32 character ids (own length, mSLAM CTC), `task_ids` int32
  (which mixture member the token came from, 1-based; added by `slm_jax.data.pipeline`);
* model features (what `SLMFeatureConverter` / `slm_jax.data.pipeline` yield per batch,
  `[batch, length]` int32 each; the CTC stream `[batch, ctc_length]`);
* logical axis names (what every parameter and activation is annotated with; rules in
  `MeshConfig.logical_axis_rules` map them to mesh axes `('data', 'fsdp', 'tensor')`).
"""

from __future__ import annotations

# --- task features (per example, before packing) ---------------------------------------
TARGETS = "targets"
MODALITY = "modality"
LOSS_MASK = "loss_mask"
PATCH_IDS = "patch_ids"
CTC_TARGETS = "ctc_targets"
TASK_IDS = "task_ids"  # added by `slm_jax.data.pipeline.get_dataset` after preprocessing, before packing
# Per-token features that stay aligned with `targets` (same length) through splitting and packing.
ALIGNED_TASK_FEATURES = (TARGETS, MODALITY, LOSS_MASK, PATCH_IDS)

# --- model features (per packed batch, [batch, length] int32) -------------------------
DECODER_INPUT_TOKENS = "decoder_input_tokens"
DECODER_TARGET_TOKENS = "decoder_target_tokens"
DECODER_LOSS_WEIGHTS = "decoder_loss_weights"
DECODER_SEGMENT_IDS = "decoder_segment_ids"
DECODER_POSITIONS = "decoder_positions"
DECODER_MODALITY = "decoder_modality"  # 0 pad, 1 text, 2 speech, 3 marker (MODALITY_*)
DECODER_PATCH_IDS = "decoder_patch_ids"  # LST latent patch per token, -1 = none
# seqio's DecoderFeatureConverter layout: what every model reads.
CORE_MODEL_FEATURES = (DECODER_INPUT_TOKENS, DECODER_TARGET_TOKENS, DECODER_LOSS_WEIGHTS,
                       DECODER_SEGMENT_IDS, DECODER_POSITIONS)
# Per-token extras the slm_jax pipeline always yields (zeros / -1 where a task lacks them).
EXTRA_MODEL_FEATURES = (DECODER_MODALITY, DECODER_PATCH_IDS)
# The packed character-CTC stream, each [batch, ctc_length] int32 (only for tasks writing
# `ctc_targets`); `slm_jax.models.ctc.ctc_targets_from_packed` unpacks it.
DECODER_CTC_TARGETS = "decoder_ctc_targets"
DECODER_CTC_SEGMENT_IDS = "decoder_ctc_segment_ids"
DECODER_CTC_POSITIONS = "decoder_ctc_positions"
CTC_MODEL_FEATURES = (DECODER_CTC_TARGETS, DECODER_CTC_SEGMENT_IDS, DECODER_CTC_POSITIONS)
# Which mixture member each target token came from: 1-based index into
# `slm_jax.data.pipeline.task_names(cfg)` (a task alone is member 1), 0 on padding. Token
# accounting only (`tokens/task/<name>` in metrics.jsonl): never fed to a model.
DECODER_TASK_IDS = "decoder_task_ids"
ACCOUNTING_FEATURES = (DECODER_TASK_IDS,)
# What the trainer feeds a dense model (per-modality losses read `decoder_modality`).
TRAIN_FEATURES = (*CORE_MODEL_FEATURES[:3], DECODER_MODALITY, *CORE_MODEL_FEATURES[3:])

CTC_BLANK_ID = 0  # class 0 of the CTC head and of `CharVocabulary`

# --- modality ids (per token; `SpeechTextVocabulary.modality_ids` writes them) ---------
MODALITY_PAD = 0
MODALITY_TEXT = 1  # text block minus PAD/EOS
MODALITY_SPEECH = 2  # units, pitch, style
MODALITY_MARKER = 3  # [Text], [Speech], language tags, EOS (and seqio extra ids)
MODALITY_NAMES = {MODALITY_PAD: "pad", MODALITY_TEXT: "text", MODALITY_SPEECH: "speech",
                  MODALITY_MARKER: "marker"}
# A target token's modality in token accounting (`tokens/target_<name>` in metrics.jsonl): its
# MODALITY_NAMES name, except 0: a weighted target with modality 0 comes from a task that gives
# no modality (the converter writes 0 = unknown, e.g. unit-only tasks with a UnitVocabulary).
TARGET_MODALITY_NAMES = {**MODALITY_NAMES, MODALITY_PAD: "unknown"}

# Modality names used by task formats and benchmarks ("speech" / "text").
SPEECH = "speech"
TEXT = "text"
MODALITIES = (SPEECH, TEXT)
MODALITY_CODE = {TEXT: MODALITY_TEXT, SPEECH: MODALITY_SPEECH}

# --- marker tokens (SpiritLM layout, SpiritLM paper §2) --------------------------------
TEXT_MARKER = "[Text]"
SPEECH_MARKER = "[Speech]"

# --- logical axis names (params and activations; rules in MeshConfig) ------------------
AXIS_BATCH = "batch"
AXIS_LENGTH = "length"
AXIS_EMBED = "embed"
AXIS_HEADS = "heads"
AXIS_KV_HEADS = "kv_heads"
AXIS_HEAD_DIM = "head_dim"
AXIS_MLP = "mlp"
AXIS_VOCAB = "vocab"
AXIS_LAYERS = "layers"
AXIS_PATCH = "patch"
LOGICAL_AXES = (AXIS_BATCH, AXIS_LENGTH, AXIS_EMBED, AXIS_HEADS, AXIS_KV_HEADS, AXIS_HEAD_DIM,
                AXIS_MLP, AXIS_VOCAB, AXIS_LAYERS, AXIS_PATCH)
