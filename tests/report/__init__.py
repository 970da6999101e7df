"""Tests of pytest_biascheck.report (a package so helpers import under a unique module name)."""
