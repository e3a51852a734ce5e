"""Schema and migration tests."""
