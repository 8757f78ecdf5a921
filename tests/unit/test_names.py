"""The one file-name rule (``processor.names``) and the places that apply it."""

from __future__ import annotations

import pytest

from processor.config import load_settings
from processor.errors import ConfigError
from processor.names import is_plain_name, is_plain_path


@pytest.mark.parametrize("name", ["toon-00.png", "a b.jpg", "bär.png", ".hidden", "...", "a..b", "%2E%2E"])
def test_plain_names(name: str) -> None:
    assert is_plain_name(name) and is_plain_path(name)


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a\\b", "a\0b", "/"])
def test_names_that_are_not_one_plain_file(name: str) -> None:
    assert not is_plain_name(name)


@pytest.mark.parametrize(("path", "plain"), [
    ("a/b/c.png", True), ("a", True), ("", False), ("a//b", False), ("/a", False), ("a/", False),
    ("a/./b", False), ("a/../b", False), ("..", False), ("a\\b/c", False), ("a/b\0", False),
])
def test_plain_paths(path: str, plain: bool) -> None:
    assert is_plain_path(path) is plain


@pytest.mark.parametrize("prefix", ["in/../puts", "in//puts", "in\\puts", "."])
def test_a_prefix_that_is_not_a_plain_path_is_refused(prefix: str) -> None:
    with pytest.raises(ConfigError):
        load_settings(None, prefixes={"inputs": prefix})
    with pytest.raises(ConfigError):
        load_settings(None, api={"submit_prefix": prefix})
