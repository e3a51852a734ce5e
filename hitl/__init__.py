"""Pure rules of the HITL Approval Gateway, shared by workflows, activities and the API.

Nothing in this package performs I/O: it holds models, lifecycle transitions, row hashing,
slippage arithmetic, error codes and settings. The exceptions are ``make run``'s entry points,
``hitl.run`` (the process supervisor) and ``hitl.demo_bot``, which nothing else imports.
"""
