"""Shared fixtures: which labs the suite covers (``--lab``), and helpers to run them."""

from __future__ import annotations

from labkit.config import list_labs


def pytest_addoption(parser):
    parser.addoption("--lab", default=None, help="only test this lab")


def pytest_generate_tests(metafunc):
    if "lab" in metafunc.fixturenames:
        only = metafunc.config.getoption("--lab")
        labs = [lab for lab in list_labs() if only in (None, lab.name)]
        metafunc.parametrize("lab", labs, ids=[lab.name for lab in labs])
