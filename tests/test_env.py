"""sslx._env.scoped_environ: variables set inside the block, restored or removed afterwards, even on errors."""
from __future__ import annotations

import os

import pytest

from sslx._env import scoped_environ


def test_scoped_environ_restores_old_values_and_removes_new_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSLX_TEST_OLD", "before")
    monkeypatch.delenv("SSLX_TEST_NEW", raising=False)
    with pytest.raises(RuntimeError, match="inside"):
        with scoped_environ({"SSLX_TEST_OLD": "during", "SSLX_TEST_NEW": "added"}):
            assert os.environ["SSLX_TEST_OLD"] == "during"
            assert os.environ["SSLX_TEST_NEW"] == "added"
            raise RuntimeError("inside")
    assert os.environ["SSLX_TEST_OLD"] == "before"
    assert "SSLX_TEST_NEW" not in os.environ
