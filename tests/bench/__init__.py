"""The benchmark still works (a smoke run; performance itself is measured by `python -m bench`)."""
