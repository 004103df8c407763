"""Fixtures shared by the training tests."""

from __future__ import annotations

import pytest

from llmlab.train.config import DataConfig


@pytest.fixture(scope="module")
def tiny_data() -> DataConfig:
    """The fixed 9-play Shakespeare subset: built in, small enough to tokenize in a second."""
    return DataConfig(data="shakespeare-tiny")
