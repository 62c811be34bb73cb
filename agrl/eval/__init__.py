"""Evaluation: classification metrics, greedy / posterior policy evaluation, scoring."""
