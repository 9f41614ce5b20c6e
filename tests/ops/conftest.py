"""Test setup for the ops: a fixed seed per test (tests/conftest.py sets TRITON_INTERPRET=1 without a GPU)."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(1234)
    yield
