"""maefast.job_setup: one vocabulary for precision (fp8 included) and compile in every job, the attention choice
of training as the trainer makes it (its tuning step at a sub-batch), and the one matmul measurement behind MFU."""
import pytest
import torch

import maefast
from maefast.embedding.config import embed_config
from maefast.errors import UserInputError
from maefast.job_setup import RunSetup, choose_attention, embedding_step, matmul_rate, training_step
from maefast.models.attention_setup import TUNING_CROPS, current_attention, recording_attention_calls
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


def test_training_attention_is_set_on_every_site_and_its_tuning_step_is_a_forward_at_a_sub_batch():
    torch.manual_seed(0)
    model = maefast.create_model("camae_vit_debug_patch8_64", img_size=32, decoder_depth=1)
    setup = RunSetup.resolve(CPU)
    step = training_step(model, (TUNING_CROPS + 16, 3, 32), setup)
    record = choose_attention(model, "math", setup, step, needs_grad=True)
    assert current_attention(model) == {role: "math" for role in ("encoder", "decoder", "cross")}
    assert record == {"requested": "math", "choice": current_attention(model), "timings": {}}
    with recording_attention_calls() as calls:
        step()  # what tune_attention records the shapes from on a GPU: the job's shapes at TUNING_CROPS crops
    assert set(calls) == {"encoder", "decoder", "cross"}
    assert calls["encoder"].q.shape[0] == TUNING_CROPS
    assert all(p.grad is None for p in model.parameters())  # a forward only: tuning times the backward itself


def test_the_embedding_tuning_step_runs_the_forward_at_a_sub_batch_of_the_tile_batch():
    batches = []
    step = embedding_step(lambda pixels: batches.append((pixels.shape, pixels.dtype)), 256, (5, 32, 32),
                          RunSetup.resolve(CPU))
    step()
    step = embedding_step(lambda pixels: batches.append((pixels.shape, pixels.dtype)), 6, (5, 32, 32),
                          RunSetup.resolve(CPU))
    step()
    assert batches == [((TUNING_CROPS, 5, 32, 32), torch.uint16), ((6, 5, 32, 32), torch.uint16)]


def test_fp8_is_a_precision_of_every_job_bf16_with_its_gemms_converted_once_by_prepare(monkeypatch):
    assert load_config("debug", ["run.precision=fp8"]).run.precision == "fp8"
    assert embed_config({"checkpoint": "c", "data": "d", "precision": "fp8"}).precision == "fp8"
    setup = RunSetup.resolve(CPU, "fp8")
    assert setup == RunSetup(CPU, "fp8", False) and setup.dtype == torch.bfloat16
    with setup.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    monkeypatch.setenv("MAEFAST_FP8_MIN_FEATURES", "64")  # the debug model is 64 wide
    model = maefast.create_model("mae_vit_debug_patch8_64", img_size=32, in_chans=3)
    names = list(model.state_dict())
    assert RunSetup.resolve(CPU, "bf16").prepare(model) is None
    assert not any("Float8" in type(m).__name__ for m in model.modules())
    report = setup.prepare(model)
    assert report["emulated"] and "encoder.blocks.0.in_proj" in report["fp8"] and "decoder_pred" in report["kept"]
    assert type(model.get_submodule("encoder.blocks.0.in_proj")).__name__ == "Float8Linear"
    assert list(model.state_dict()) == names  # checkpoints keep their keys


def test_the_matmul_rate_is_measured_without_touching_the_jobs_random_stream():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    rate = matmul_rate(CPU, "bf16")
    assert torch.equal(torch.rand(3), expected)
    assert 1e6 < rate < 1e15  # FLOP/s of a CPU: measured, positive, not a GPU's
