"""End-to-end tests: the whole gateway as `make run` starts it."""
