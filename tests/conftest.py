import pyro
import pytest
import torch

# The suite's problems are tiny: one intra-op thread avoids thread-pool contention, which on a
# busy 2-core machine made each step ~30x slower.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _pyro_defaults():
    """float64, validation on, a clean param store and a fixed seed for every test."""
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    pyro.enable_validation(True)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    torch.set_default_dtype(dtype)
    pyro.clear_param_store()
