"""Tests of pytest_biascheck.metrics (a package so helpers import under a unique module name)."""
