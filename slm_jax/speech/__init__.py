"""Audio -> features -> units (DESIGN.md item 1).

audio (WAV I/O, resampling), features (JAX log-mel / MFCC), kmeans (JAX k-means, sharded),
units (dedup with durations), prosody (pitch and style tokens), encoders (HuBERT / Whisper
from local weights, `[hf]` extra), pipeline (`slm-jax units fit|encode`); workers, frame_sample, verify
(the same on many workers, and `slm-jax units verify`).
"""
