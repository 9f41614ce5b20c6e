"""maefast.job_setup: one vocabulary for precision and compile in every job, the attention choice of training
as the trainer makes it, and the one matmul measurement behind MFU."""
import pytest
import torch

import maefast
from maefast.embedding.config import embed_config
from maefast.errors import UserInputError
from maefast.job_setup import RunSetup, choose_attention, matmul_rate, training_step
from maefast.models.attention_setup import current_attention
from maefast.train.config import load_config

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # a device name only: nothing here runs on a GPU


def test_auto_is_bf16_and_compiled_on_cuda_and_fp32_and_eager_elsewhere():
    assert RunSetup.resolve(CUDA) == RunSetup(CUDA, "bf16", True)
    assert RunSetup.resolve(CPU) == RunSetup(CPU, "fp32", False)
    assert RunSetup.resolve(CPU, "bf16", True) == RunSetup(CPU, "bf16", True)
    assert RunSetup.resolve(CUDA, "fp32", False).dtype == torch.float32
    with RunSetup.resolve(CPU, "bf16").autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with RunSetup.resolve(CPU).autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


@pytest.mark.parametrize("text, value", [("auto", "auto"), ("true", True), ("false", False), ("on", True),
                                         ("off", False)])
def test_training_and_embedding_read_compile_the_same_way(text, value):
    assert load_config("debug", [f"run.compile={text}"]).run.compile == value
    assert embed_config({"checkpoint": "c", "data": "d"}, [f"compile={text}"]).compile == value


def test_a_compile_value_outside_the_vocabulary_is_refused_everywhere():
    with pytest.raises(UserInputError, match="run.compile='sometimes' is not allowed"):
        load_config("debug", ["run.compile=sometimes"])
    with pytest.raises(UserInputError, match="compile='sometimes' is not allowed"):
        embed_config({"checkpoint": "c", "data": "d", "compile": "sometimes"})
    for value in ("on", 1, 0.0):  # typed values: only "auto", True and False
        with pytest.raises(UserInputError, match="compile must be auto, true or false"):
            RunSetup.resolve(CPU, compile=value)
    with pytest.raises(UserInputError, match="precision must be one of"):
        RunSetup.resolve(CPU, precision="fp16")


def test_training_attention_is_set_on_every_site_and_the_step_it_would_time_trains_the_model():
    torch.manual_seed(0)
    model = maefast.create_model("camae_vit_debug_patch8_64", img_size=32, decoder_depth=1)
    setup = RunSetup.resolve(CPU)
    step = training_step(model, (2, 3, 32), setup)
    record = choose_attention(model, "math", setup, step, needs_grad=True)
    assert current_attention(model) == {role: "math" for role in ("encoder", "decoder", "cross")}
    assert record == {"requested": "math", "choice": current_attention(model), "timings": {}}
    step()  # a forward and backward at the job's shapes, as tune_attention runs it on a GPU
    assert all(p.grad is not None for p in model.encoder.blocks.parameters())


def test_the_matmul_rate_is_measured_without_touching_the_jobs_random_stream():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    rate = matmul_rate(CPU, "bf16")
    assert torch.equal(torch.rand(3), expected)
    assert 1e6 < rate < 1e15  # FLOP/s of a CPU: measured, positive, not a GPU's
