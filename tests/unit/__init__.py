"""Unit tests: pure functions and values, no broker."""
