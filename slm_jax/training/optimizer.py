"""AdamW with warmup + cosine/linear decay, global-norm clipping, no decay on norms/biases."""
from __future__ import annotations

import dataclasses

import gin
import jax
import optax

DECAYS = ("cosine", "linear", "constant")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    learning_rate: float = 3e-4
    warmup_steps: int = 100
    decay: str = "cosine"
    decay_steps: int | None = None  # default: the run's total steps
    final_lr_fraction: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip_norm: float | None = 1.0

    def __post_init__(self):
        if self.decay not in DECAYS:
            raise ValueError(f"OptimizerConfig.decay={self.decay!r}: expected one of {DECAYS}")
        if self.warmup_steps < 0:
            raise ValueError(f"OptimizerConfig.warmup_steps={self.warmup_steps} must be >= 0")


def make_schedule(cfg: OptimizerConfig, total_steps: int) -> optax.Schedule:
    peak, warmup = cfg.learning_rate, cfg.warmup_steps
    decay_steps = max((cfg.decay_steps or total_steps) - warmup, 1)
    end = peak * cfg.final_lr_fraction
    if cfg.decay == "cosine":
        after = optax.cosine_decay_schedule(peak, decay_steps, alpha=cfg.final_lr_fraction)
    elif cfg.decay == "linear":
        after = optax.linear_schedule(peak, end, decay_steps)
    else:
        after = optax.constant_schedule(peak)
    if warmup == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def decay_mask(params):
    """True where weight decay applies: matrices, not norm scales or biases.

    Decided by parameter NAME, not rank: scanned norm scales are 2-D ([layers, embed]).
    """
    def decays(path, _):
        name = getattr(path[-1], "key", str(path[-1]))
        return name not in ("scale", "bias")
    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(cfg: OptimizerConfig, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = make_schedule(cfg, total_steps)
    chain = []
    if cfg.grad_clip_norm:
        chain.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
    chain.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                             mask=decay_mask))
    return optax.chain(*chain), schedule
