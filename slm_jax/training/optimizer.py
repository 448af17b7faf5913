"""AdamW with warmup + cosine/linear decay, global-norm clipping, no decay on norms/biases."""
from __future__ import annotations

import dataclasses
import math
import numbers

import gin
import jax
import optax

from slm_jax.gin_utils import ConfigError

DECAYS = ("cosine", "linear", "constant")


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW + LR schedule (gin: `OptimizerConfig.*`); every field is checked in `__post_init__`.

    Attributes:
      learning_rate: peak LR, reached at the end of warmup; float > 0.
      warmup_steps: steps of linear warmup from 0 to `learning_rate`; int >= 0.
      decay: shape of the LR after warmup: 'cosine', 'linear' or 'constant'.
      decay_steps: step (counted from 0, warmup included) where the decay reaches its end
        value; int > warmup_steps, or None for the run's total steps (train.train_steps).
      final_lr_fraction: end LR as a fraction of `learning_rate` ('cosine'/'linear'); in [0, 1].
      b1: Adam first-moment decay; in [0, 1).
      b2: Adam second-moment decay; in [0, 1).
      eps: Adam denominator epsilon; float > 0.
      weight_decay: decoupled AdamW decay per step, scaled by the LR (matrices only, see
        `decay_mask`); float >= 0.
      grad_clip_norm: clip gradients to this global L2 norm before Adam; float > 0, or None
        for no clipping.

    Raises ConfigError (a ValueError) naming `OptimizerConfig.<field>` for a bad value.
    """

    learning_rate: float = 3e-4
    warmup_steps: int = 100
    decay: str = "cosine"
    decay_steps: int | None = None
    final_lr_fraction: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip_norm: float | None = 1.0

    def __post_init__(self):
        def check(field: str, ok: bool, rule: str):
            if not ok:
                raise ConfigError(f"OptimizerConfig.{field}={getattr(self, field)!r}: must be {rule}")

        check("learning_rate", _is_real(self.learning_rate) and self.learning_rate > 0, "a float > 0")
        check("warmup_steps", _is_int(self.warmup_steps) and self.warmup_steps >= 0, "an int >= 0")
        check("decay", self.decay in DECAYS, f"one of {DECAYS}")
        check("decay_steps", self.decay_steps is None or (_is_int(self.decay_steps) and self.decay_steps >= 1),
              "None (the run's total steps) or an int >= 1")
        check("decay_steps", self.decay_steps is None or self.decay_steps > self.warmup_steps,
              f"> OptimizerConfig.warmup_steps={self.warmup_steps} (it counts from step 0, warmup included)")
        check("final_lr_fraction", _is_real(self.final_lr_fraction) and 0 <= self.final_lr_fraction <= 1,
              "in [0, 1]")
        for beta in ("b1", "b2"):
            value = getattr(self, beta)
            check(beta, _is_real(value) and 0 <= value < 1, "in [0, 1)")
        check("eps", _is_real(self.eps) and self.eps > 0, "a float > 0")
        check("weight_decay", _is_real(self.weight_decay) and self.weight_decay >= 0, "a float >= 0")
        check("grad_clip_norm", self.grad_clip_norm is None or (_is_real(self.grad_clip_norm)
                                                                and self.grad_clip_norm > 0),
              "None (no clipping) or a float > 0")


def make_schedule(cfg: OptimizerConfig, total_steps: int) -> optax.Schedule:
    """step (int or int32 scalar) -> learning rate (float32 scalar).

    Linear warmup 0 -> `cfg.learning_rate` over `cfg.warmup_steps`, then `cfg.decay` until
    step `cfg.decay_steps` (default `total_steps`), then flat at the end value.
    Raises ConfigError if `total_steps` (train.train_steps) is not an int >= 1.
    """
    if not _is_int(total_steps) or total_steps < 1:
        raise ConfigError(f"total_steps (train.train_steps)={total_steps!r}: must be an int >= 1")
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


def schedule_problem(cfg: OptimizerConfig, total_steps: int) -> str | None:
    """Why the schedule of a `total_steps` run never reaches its peak or never decays (None when it
    does): with `decay_steps` unset the decay ends at the last step, so a run no longer than its
    warmup stops while the learning rate is still rising."""
    if cfg.decay_steps is None and cfg.warmup_steps > 0 and total_steps <= cfg.warmup_steps:
        return (f"the run ends at step {total_steps}, within OptimizerConfig.warmup_steps={cfg.warmup_steps}: the "
                f"learning rate is still warming up ({total_steps / cfg.warmup_steps:.0%} of its peak) when the run "
                f"stops and never decays; lower warmup_steps (e.g. to {max(total_steps // 10, 1)}) or train longer")
    return None


def decay_mask(params):
    """A pytree of bools with the structure of `params`: True where weight decay applies.

    Matrices decay, norm scales and biases (leaves named 'scale' / 'bias') do not; decided
    by parameter NAME, not rank: scanned norm scales are 2-D ([layers, embed]).
    """
    def decays(path, _):
        name = getattr(path[-1], "key", str(path[-1]))
        return name not in ("scale", "bias")
    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(cfg: OptimizerConfig, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(optax transformation, LR schedule) for a run of `total_steps` steps.

    The transformation clips to `cfg.grad_clip_norm` (if set), then applies AdamW with the
    schedule of `make_schedule`; updates have the params' shapes and dtypes. Raises
    ConfigError like `make_schedule`.
    """
    schedule = make_schedule(cfg, total_steps)
    chain = []
    if cfg.grad_clip_norm is not None:
        chain.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
    chain.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                             mask=decay_mask))
    return optax.chain(*chain), schedule
