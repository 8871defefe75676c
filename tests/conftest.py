"""Fixtures are split by area into plugin modules under tests/fixtures/."""

pytest_plugins = [
    "tests.fixtures.servers",
    "tests.fixtures.models",
    "tests.fixtures.cache",
    "tests.fixtures.service",
]
