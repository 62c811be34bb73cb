"""Experiments on the relevance world: `agrl reproduce`, its tables and figures, the capacity
model of docs/scaling.md."""
