"""Small synthetic screens made once per test session in a temporary folder."""
import shutil

import pytest

from maefast.data.synthetic import synth_screen

SMALL = dict(num_genes=6, replicates=2, num_plates=2, num_experiments=1, controls_per_plate=2, sites_per_well=1,
             workers=1, progress=False, seed=5)


@pytest.fixture(scope="session")
def rxrx8(tmp_path_factory):
    """8-bit RxRx PNG screen, 16 sites of 96x96 pixels, 6 channels."""
    return synth_screen(tmp_path_factory.mktemp("rxrx8"), layout="rxrx", size=96, **SMALL)


@pytest.fixture(scope="session")
def rxrx16(tmp_path_factory):
    """16-bit RxRx PNG screen with 3 channels."""
    return synth_screen(tmp_path_factory.mktemp("rxrx16"), layout="rxrx", size=80, channels=3, bit_depth=16, **SMALL)


@pytest.fixture(scope="session")
def jump16(tmp_path_factory):
    """16-bit JUMP TIFF screen with illumination functions, 5 channels."""
    return synth_screen(tmp_path_factory.mktemp("jump16"), layout="jump", size=72, channels=5, **SMALL)


@pytest.fixture()
def broken_rxrx(rxrx8, tmp_path):
    """A copy of rxrx8 with one truncated PNG and one missing channel file: (root, {id: bad path})."""
    root = tmp_path / "broken"
    shutil.copytree(rxrx8, root)
    from maefast.data import open_dataset
    table = open_dataset(root).table
    truncated = table.at[3, "file_ER"]
    data = open(truncated, "rb").read()
    open(truncated, "wb").write(data[: len(data) // 2])
    missing = table.at[9, "file_Mito"]
    shutil.os.remove(missing)
    return root, {table.at[3, "id"]: truncated, table.at[9, "id"]: missing}
