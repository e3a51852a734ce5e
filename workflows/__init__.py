"""Temporal workflows: deterministic orchestration of approvals, free of I/O."""
