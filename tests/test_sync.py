"""The blocking facade keeps the async API's signatures and docstrings, so help() and editors show them."""

from __future__ import annotations

import inspect

import pytest

import sandboxes
import sandboxes.sync as sync

METHODS = ["create", "get", "find", "get_or_create", "list", "configure", "execute", "execute_many", "stream",
           "write_file", "write_files", "read_file", "upload", "download", "run_code", "destroy"]  # fmt: skip


@pytest.mark.parametrize("name", METHODS)
def test_each_blocking_method_has_its_async_twins_parameters_and_docstring(name: str) -> None:
    blocking, original = getattr(sync.Sandbox, name), getattr(sandboxes.Sandbox, name)
    assert inspect.getdoc(blocking) and inspect.getdoc(blocking) == inspect.getdoc(original)
    theirs = [(p.name, p.kind, p.default) for p in inspect.signature(original).parameters.values()]
    ours = [(p.name, p.kind, p.default) for p in inspect.signature(blocking).parameters.values()]
    assert ours == theirs


@pytest.mark.parametrize("name", ["run", "run_many", "judge"])
def test_the_module_functions_too(name: str) -> None:
    blocking, original = getattr(sync, name), getattr(sandboxes, name)
    assert inspect.getdoc(blocking) == inspect.getdoc(original)
    assert list(inspect.signature(blocking).parameters) == list(inspect.signature(original).parameters)
