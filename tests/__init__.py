"""postdate test suite."""
