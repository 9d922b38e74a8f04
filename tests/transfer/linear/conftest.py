"""Fixtures for the linear-evaluation tests (helpers live in linear_fixtures.py, a unique module name)."""

from __future__ import annotations

import pytest
import torch
from linear_fixtures import write_encoder


@pytest.fixture(scope="session")
def encoder_file(tmp_path_factory):
    return write_encoder(tmp_path_factory.mktemp("encoder") / "random.pt")


@pytest.fixture(scope="session")
def loaded_encoder(encoder_file):
    from pretrain.checkpoint import load_encoder

    return load_encoder(encoder_file)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The test machine's two cores are shared: two spinning intra-op threads are many times slower
    than one under load, so these tests run torch single-threaded."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
