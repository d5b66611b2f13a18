"""Shared test settings.

The run cache on disk (``adlib.study.runcache``) is off in every test unless the test turns it on with its own
folder: a test must train what it tests (a cached fit would hide a change made through monkeypatching, which
the cache's source hash cannot see), and tests must not fill the user's cache.
"""
import pytest


@pytest.fixture(autouse=True)
def _no_run_cache(monkeypatch):
    monkeypatch.setenv("ADLIB_RUN_CACHE", "0")
