"""Tests of the activities package."""
