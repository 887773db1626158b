"""Fuzzing: hypothesis profiles and seeds for tests/test_fuzz_*.py, and atheris harnesses run by hand."""
