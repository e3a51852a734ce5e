"""The launcher's tests reuse the API's fixture: a real app, Temporal dev server and database."""

from __future__ import annotations

from tests.api.conftest import api

__all__ = ["api"]
