import pytest

from maefast.data.synthetic import synth_screen


@pytest.fixture(scope="session")
def screen(tmp_path_factory):
    """A small synthetic RxRx-layout screen shared by the tests (6 channels, 128 px sites, 8-bit)."""
    path = tmp_path_factory.mktemp("screen")
    synth_screen(path, layout="rxrx", num_genes=6, replicates=1, num_plates=1, num_experiments=1,
                 controls_per_plate=2, sites_per_well=2, size=128, channels=6, seed=3, progress=False)
    return path
