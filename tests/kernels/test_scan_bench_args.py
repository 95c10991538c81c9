"""`mamba-suite bench scan` argument parsing (the GPU benchmark itself runs on the H200, not in tests)."""

from __future__ import annotations

import os

import pytest

from mambasuite.kernels.benchmark import _tile_override, config_label, parse_configs


def test_parse_configs_forward_only_and_forward_backward():
    assert parse_configs("256:8:4, 1024:1:1/1024:2:4") == [((256, 8, 4),), ((1024, 1, 1), (1024, 2, 4))]
    assert [config_label(c) for c in parse_configs("256:8:4,1024:1:1/1024:2:4")] == ["256:8:4", "1024:1:1/1024:2:4"]


def test_parse_configs_register_caps():
    assert parse_configs("128:2:1:96/64:2:1:128") == [((128, 2, 1, 96), (64, 2, 1, 128))]
    assert config_label(((128, 2, 1), (64, 2, 1, 128))) == "128:2:1/64:2:1:128"


@pytest.mark.parametrize("bad", ["256:8", "256:8:0", "1:2:3/4:5", "a:b:c", "1:1:1/1:1:1/1:1:1",
                                 "1:2:3:4:5", "64:2:1:0"])
def test_parse_configs_rejects_malformed_items(bad):
    with pytest.raises(ValueError, match="BLOCK_T:BLOCK_D:WARPS"):
        parse_configs(bad)


def test_tile_override_sets_and_restores_the_environment(monkeypatch):
    monkeypatch.setenv("MAMBASUITE_SCAN_BWD_WARPS", "8")
    with _tile_override(((64, 2, 1),)):
        assert os.environ["MAMBASUITE_SCAN_BLOCK_T"] == "64"
        assert "MAMBASUITE_SCAN_BWD_WARPS" not in os.environ  # a forward-only config applies to both kernels
    assert os.environ["MAMBASUITE_SCAN_BWD_WARPS"] == "8" and "MAMBASUITE_SCAN_BLOCK_T" not in os.environ
