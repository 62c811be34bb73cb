"""agrl: a pure-JAX research implementation of TaoSR-AGRL (GRPO + RRS + AGR)."""

__version__ = "0.1.0"
