"""Alembic migrations for the schema in ``store.tables``; ``migrations.runner`` applies them."""
