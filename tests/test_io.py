"""maefast.io: nested state as safetensors + JSON comes back exactly; damaged files are named; outputs get the
usual file mode and a failed write is an OSError."""
import os
import random

import numpy as np
import pytest
import torch

import maefast
from maefast.errors import UserInputError
from maefast.io import read_json, read_safetensors, read_state, read_table, write_state
from maefast.train.state import rng_state, set_rng_state


def test_nested_state_comes_back_exactly(tmp_path):
    state = {"optimizer": {"state": {"blocks.0.weight": {"exp_avg": torch.randn(3, 4), "step": torch.tensor(7.0)}},
                           "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.95), "foreach": None, "params": ["a"]}]},
             "by_rank": {0: "first", 1: "second"}, "counters": [1, 2.5, True, "x", float("inf")],
             "array": np.arange(6, dtype=np.uint32).reshape(2, 3)}
    write_state(tmp_path / "state", state)
    back = read_state(tmp_path / "state")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", "state.safetensors"]
    torch.testing.assert_close(back["optimizer"]["state"]["blocks.0.weight"]["exp_avg"],
                               state["optimizer"]["state"]["blocks.0.weight"]["exp_avg"], rtol=0, atol=0)
    assert back["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]  # the tuple stays a tuple
    assert back["by_rank"] == {0: "first", 1: "second"} and back["counters"] == state["counters"]
    assert back["array"].dtype == np.uint32 and np.array_equal(back["array"], state["array"])


def test_rng_states_resume_the_same_streams(tmp_path):
    random.random(), np.random.normal(), torch.rand(1)  # numpy holds a cached gaussian now
    write_state(tmp_path / "rng", [rng_state()])
    expected = (random.random(), np.random.normal(), np.random.rand(), torch.rand(3))
    set_rng_state(read_state(tmp_path / "rng")[0])
    got = (random.random(), np.random.normal(), np.random.rand(), torch.rand(3))
    assert got[:3] == expected[:3] and torch.equal(got[3], expected[3])


def test_damaged_files_are_named(tmp_path):
    write_state(tmp_path / "state", {"weights": torch.ones(100)})
    data = (tmp_path / "state.safetensors").read_bytes()
    (tmp_path / "state.safetensors").write_bytes(data[:-10])
    with pytest.raises(UserInputError, match=r"state.safetensors: damaged or truncated safetensors file"):
        read_state(tmp_path / "state")
    with pytest.raises(UserInputError, match=r"state.safetensors: damaged or truncated"):
        read_safetensors(tmp_path / "state.safetensors")
    (tmp_path / "meta.json").write_text('{"step": 4, "total_fl')
    with pytest.raises(UserInputError, match=r"meta.json: damaged or truncated JSON"):
        read_json(tmp_path / "meta.json")
    (tmp_path / "shard.parquet").write_bytes(b"PAR1 cut off")
    with pytest.raises(UserInputError, match=r"shard.parquet: cannot be read as a table \(ArrowInvalid: "):
        read_table(tmp_path / "shard.parquet")
    with pytest.raises(TypeError, match="cannot store a set"):
        write_state(tmp_path / "other", {"bad": {1, 2}})


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_safetensors_outputs_get_the_usual_mode(tmp_path, umask):
    """safetensors writes its own temporary file (mode 0600) and renames it: every weights file was 0600."""
    from maefast.io import write_safetensors
    previous = os.umask(umask)
    try:
        write_safetensors({"a": torch.zeros(3)}, tmp_path / "weights.safetensors")
        maefast.save_pretrained(maefast.create_model("vit_debug_patch8_64", in_chans=1), tmp_path / "model")
    finally:
        os.umask(previous)
    for path in (tmp_path / "weights.safetensors", tmp_path / "model" / "model.safetensors"):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_failed_safetensors_write_is_an_os_error(tmp_path):
    """A full disk (here a file size limit: EFBIG) used to raise SafetensorError, which is not an OSError, so the
    command printed a traceback."""
    import resource
    import signal

    from maefast.io import write_safetensors
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
    try:
        with pytest.raises(OSError, match=r"weights.safetensors: could not write .*File too large") as caught:
            write_safetensors({"a": torch.zeros(10_000)}, tmp_path / "weights.safetensors")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    assert caught.value.errno == 27 and not list(tmp_path.iterdir())  # nothing half-written left behind
