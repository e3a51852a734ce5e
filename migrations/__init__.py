"""Alembic migrations for the schema in ``hitl.tables``; ``migrations.runner`` applies them."""
