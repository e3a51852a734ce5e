"""Tests of the HITL Approval Gateway."""
