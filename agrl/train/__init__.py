"""Training: jitted steps, the RL iteration, the run loop, stages, checkpoints, metrics."""
