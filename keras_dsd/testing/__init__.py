"""Helpers for keras_dsd's own tests (and for tests of code built on it)."""
