"""Index names are checked before any request, so a name can never widen a search."""

from __future__ import annotations

import pytest

from secondpass.connectors import ElasticsearchConnector, OpenSearchConnector, validate_index_name
from secondpass.connectors._validate import validate_indices
from secondpass.errors import ConfigurationError, InvalidIndexNameError, QueryError

VALID = ["docs", "docs-2024.01", "my_index", "a", ".hidden-index", "x" * 255, "café"]

INVALID = {
    "wildcard": "logs-*",
    "comma": "a,b",
    "all": "_all",
    "slash": "a/b",
    "dot-dot path": "../_cluster",
    "backslash": "a\\b",
    "question mark": "a?b",
    "hash": "a#b",
    "space": "a b",
    "quote": 'a"b',
    "pipe": "a|b",
    "angle (date math)": "<logs-{now/d}>",
    "percent": "a%2Fb",
    "newline": "a\nb",
    "nul": "a\x00b",
    "uppercase": "Docs",
    "leading dash": "-docs",
    "leading underscore": "_docs",
    "leading plus": "+docs",
    "remote cluster": "other:docs",
    "dot": ".",
    "dotdot": "..",
    "empty": "",
    "too long": "x" * 256,
    "too long in bytes": "é" * 128,
}


@pytest.mark.parametrize("name", VALID)
def test_valid_names_pass_unchanged(name: str) -> None:
    assert validate_index_name(name) == name


@pytest.mark.parametrize("name", list(INVALID.values()), ids=list(INVALID))
def test_invalid_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidIndexNameError) as info:
        validate_index_name(name)
    # usable as both a query problem and a configuration problem
    assert isinstance(info.value, QueryError)
    assert isinstance(info.value, ConfigurationError)
    assert "invalid index name" in str(info.value)


@pytest.mark.parametrize("name", ["logs-*", "a,b", "_all", "logs-*,-logs-old", "other:docs", "*"])
def test_patterns_need_an_explicit_opt_in(name: str) -> None:
    with pytest.raises(InvalidIndexNameError, match="allow_index_patterns|pattern|cannot start"):
        validate_index_name(name)
    assert validate_index_name(name, allow_patterns=True) == name


@pytest.mark.parametrize(
    "name", ["a/b,c", "Logs-*", "a,,b", "-", "a b*", "logs-*,_x", "x" * 256 + ",a"]
)
def test_patterns_still_obey_the_character_rules(name: str) -> None:
    with pytest.raises(InvalidIndexNameError):
        validate_index_name(name, allow_patterns=True)


def test_a_sequence_checks_each_name_and_refuses_smuggled_commas() -> None:
    assert validate_indices(["a", "b"]) == ("a", "b")
    with pytest.raises(InvalidIndexNameError):
        validate_indices(["a", "b,c"])
    with pytest.raises(InvalidIndexNameError):
        validate_indices([])


def test_non_string_is_refused() -> None:
    with pytest.raises(InvalidIndexNameError, match="must be a string"):
        validate_index_name(42)  # type: ignore[arg-type]


@pytest.mark.parametrize("cls", [ElasticsearchConnector, OpenSearchConnector])
def test_connectors_refuse_bad_names_at_construction(cls: type) -> None:
    # An unroutable host: if construction tried to connect, this would hang or fail differently.
    with pytest.raises(InvalidIndexNameError):
        cls(index="logs-*", fields=["body"], hosts=["http://192.0.2.1:9"])
    connector = cls(
        index="logs-*", fields=["body"], hosts=["http://192.0.2.1:9"], allow_index_patterns=True
    )
    assert connector.indices == ("logs-*",)


@pytest.mark.parametrize("cls", [ElasticsearchConnector, OpenSearchConnector])
def test_admin_operations_need_one_concrete_index(cls: type) -> None:
    connector = cls(
        index="logs-*", fields=["body"], hosts=["http://192.0.2.1:9"], allow_index_patterns=True
    )
    with pytest.raises(InvalidIndexNameError):
        connector.delete_index()
    several = cls(index=["a", "b"], fields=["body"], hosts=["http://192.0.2.1:9"])
    with pytest.raises(ConfigurationError, match="exactly one index"):
        several.bulk_index([{"_id": "1", "body": "x"}])
