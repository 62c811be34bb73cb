"""The device mesh, the logical-axis rules table, and the multi-process runtime (no model code)."""
