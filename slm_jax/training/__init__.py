"""Mesh and logical-axis rules, optimizer, losses (`LossSums`), the Trainer's jitted steps,
the loop (`train.run_training`), Orbax checkpoints, the MODEL_DIR layout (`run_dir`),
metrics, TPU AOT compile, multi-process join and preemption. Never imports evaluation/."""
