"""pyproject.toml: metadata setuptools reads without deprecation warnings."""
import warnings
from pathlib import Path

from setuptools.config.pyprojecttoml import apply_configuration
from setuptools.dist import Distribution

ROOT = Path(__file__).resolve().parents[1]


def test_license_is_an_spdx_expression_without_deprecation_warnings(monkeypatch):
    monkeypatch.chdir(ROOT)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist = apply_configuration(Distribution(), ROOT / "pyproject.toml")
    assert dist.metadata.license_expression == "MIT"
    assert not [w for w in caught if "deprecat" in str(w.message).lower()], [str(w.message) for w in caught]
