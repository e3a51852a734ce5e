"""The HTTP API: FastAPI routers that turn requests into workflow starts, updates and signals."""
