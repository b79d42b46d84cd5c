"""Fixtures of the data-layer tests: synthetic copies of each public dataset's on-disk format (see fixtures.py)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("embedkit_data_fixtures", Path(__file__).with_name("fixtures.py"))
fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixtures)


@pytest.fixture(scope="session")
def fx():
    """The fixture-builder module (constants describe what each fixture holds)."""
    return fixtures


@pytest.fixture(scope="session")
def nih_root(tmp_path_factory) -> Path:
    return fixtures.make_nih(tmp_path_factory.mktemp("nih"))


@pytest.fixture(scope="session")
def chexpert_root(tmp_path_factory) -> Path:
    return fixtures.make_chexpert(tmp_path_factory.mktemp("chexpert"))


@pytest.fixture(scope="session")
def mimic_root(tmp_path_factory) -> Path:
    return fixtures.make_mimic(tmp_path_factory.mktemp("mimic") / "physionet.org" / "files" / "mimic-cxr-jpg" / "2.1.0")


@pytest.fixture(scope="session")
def padchest_root(tmp_path_factory) -> Path:
    return fixtures.make_padchest(tmp_path_factory.mktemp("padchest"))


@pytest.fixture(scope="session")
def vindr_root(tmp_path_factory) -> Path:
    return fixtures.make_vindr(tmp_path_factory.mktemp("vindr") / "vindr-cxr" / "1.0.0")


@pytest.fixture(scope="session")
def pcxr_root(tmp_path_factory) -> Path:
    return fixtures.make_vindr_pcxr(tmp_path_factory.mktemp("pcxr") / "vindr-pcxr" / "1.0.0")
