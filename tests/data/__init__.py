"""Tests for pytest_biascheck/data (a package so test module names may repeat across folders)."""
