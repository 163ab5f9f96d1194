"""The one device-string parser."""

from __future__ import annotations

import pytest

from runtime.devices import Device, parse_device
from runtime.errors import ConfigError


def test_device_strings() -> None:
    assert parse_device("cpu") == Device("cpu") and str(parse_device("CPU")) == "cpu"
    assert parse_device("cuda") == Device("cuda") and parse_device("cuda").gpu == 0
    assert parse_device("cuda:3") == Device("cuda", 3) and str(parse_device("cuda:3")) == "cuda:3"
    assert parse_device("auto", allow_auto=True).kind == "auto"
    for bad in ("auto", "tpu", "cuda:x", "cuda:", "gpu:0", ""):
        with pytest.raises(ConfigError, match="use cpu, cuda or cuda:N"):
            parse_device(bad)
