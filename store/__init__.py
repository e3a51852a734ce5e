"""Every table, the engine and sessions, the reads the API makes and the writes the activities
make: the only package (with ``migrations/``) that speaks SQL."""
