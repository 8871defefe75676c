"""Test helpers that are not fixtures (fault-injection proxy, ...)."""
