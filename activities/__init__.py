"""Temporal activities: all of the gateway's I/O, one module per concern."""
