"""Pure rules of the HITL Approval Gateway, shared by workflows, activities and the API.

Nothing in this package performs I/O: it holds models, lifecycle transitions, row hashing,
slippage arithmetic, error codes and settings; it imports nothing above it. ``make run``'s
supervisor and the demo bot live in ``launcher``.
"""
