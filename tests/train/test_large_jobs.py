"""Large-job machinery with several CPU processes under torchrun (gloo): FSDP2's policies, sharded checkpoints
that reshard (4 ranks -> 2 -> 3), SIGTERM on every rank, an elastic restart after a rank killed in the middle
of an asynchronous sharded save, and an embedding job rerun after a killed rank. Every command runs in a
session of its own and is killed with everything it started when its test ends (tests/processes.py)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

import maefast
from maefast.cli import main
from maefast.data import open_dataset
from maefast.embedding.job import read_job
from maefast.tables import BLOCK_COLUMN
from tests.processes import children, run, started
from tests.train.test_distributed import free_port

ROOT = Path(__file__).resolve().parents[2]
WORKER = str(ROOT / "tests" / "train" / "large_job_worker.py")
# torchrun as the README launches it: torch 2.13's agent keeps one rendezvous store for every restart of the group,
# whose keys of the previous attempt make the restarted ranks connect to dead peers; a store per attempt avoids it
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


def torchrun(ranks: int, *arguments: str, restarts: int = 0) -> list[str]:
    """torchrun as an elastic multi-node job is launched (c10d rendezvous), on one node of `ranks` processes."""
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(ranks),
            "--max-restarts", str(restarts), "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}",
            "--rdzv-id", "test", *arguments]


def succeeds(command: list[str], timeout: int = 300, env: dict | None = None) -> None:
    result = run(command, timeout, env=env or ENV)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def wait_for(path: Path, agent: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert agent.poll() is None, f"torchrun ended ({agent.returncode}) before {path} appeared: " + \
            agent.stdout.read()[-3000:]
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.02)


def reports(report: Path, ranks: int, restart: int = 0) -> list[dict]:
    return [json.loads(Path(f"{report}.{rank}.{restart}.json").read_text()) for rank in range(ranks)]


def test_fsdp2_policies_recompute_and_regional_compile(tmp_path):
    report = tmp_path / "policy"
    succeeds(torchrun(2, WORKER, "policy", str(report)))
    for rank in (0, 1):
        results = json.loads(Path(f"{report}.{rank}.json").read_text())
        plain = results["plain"]
        assert plain["sharded"] and plain["grad_dtypes"] == ["torch.float32"]
        for variant in ("full", "selective", "compiled"):  # recomputed and compiled blocks: the same gradients
            assert results[variant]["loss"] == pytest.approx(plain["loss"], rel=1e-5)
            for name, value in plain["grads"].items():
                assert results[variant]["grads"][name] == pytest.approx(value, rel=1e-4, abs=1e-6), (variant, name)
        bf16 = results["bf16"]  # bf16 gathered parameters, fp32 reduced and sharded gradients
        assert bf16["grad_dtypes"] == ["torch.float32"] and bf16["block_param_dtype"] == "torch.float32"
        assert bf16["loss"] == pytest.approx(plain["loss"], rel=2e-2) and bf16["loss"] != plain["loss"]


def stop_with_sigterm(command: list[str], checkpoint: Path) -> None:
    """Runs torchrun, and once `checkpoint` is written sends it SIGTERM (as a scheduler's preemption does)."""
    with started(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as agent:
        wait_for(checkpoint, agent)
        agent.send_signal(signal.SIGTERM)
        output = agent.communicate(timeout=120)[0]
    assert "checkpoint at step" in output, output[-3000:]


def test_sharded_checkpoints_reshard_4_2_3_and_sigterm_saves_every_rank(screen, tmp_path):
    out, report = tmp_path / "run", tmp_path / "report"
    settings = ["run.parallel=fsdp", "run.max_steps=60", "run.checkpoint_every=2", "optim.name=adamw"]
    checkpoints = out / "checkpoints"
    first_step, previous = 2, None
    for hop, ranks in enumerate((4, 2, 3)):
        stop_with_sigterm(torchrun(ranks, WORKER, "train", str(screen), str(out), f"{report}{hop}", *settings),
                          checkpoints / f"step-{first_step:08d}")
        ranks_reports = reports(Path(f"{report}{hop}"), ranks)
        last = ranks_reports[0]["saved"][-1]
        # SIGTERM: a checkpoint of the step reached, one shard file per rank, committed
        assert last["step"] == json.loads((checkpoints / "latest.json").read_text())["step"] < 60
        assert all(r["saved"][-1] == last for r in ranks_reports)
        final = checkpoints / f"step-{last['step']:08d}"
        assert len(list((final / "sharded").glob("*.safetensors"))) == ranks
        assert not list(final.rglob("*.pt")) and not (final / "model.safetensors").exists()
        if previous is not None:  # resumed the model, optimizer and data position the previous world size saved
            for r in ranks_reports:
                assert r["restored"]["step"] == previous["step"] and r["restored"]["position"] == previous["position"]
                assert r["restored"]["params"] == pytest.approx(previous["params"], rel=1e-12)
                assert r["restored"]["optimizer"] == pytest.approx(previous["optimizer"], rel=1e-12)
        previous, first_step = last, (last["step"] // 2 + 1) * 2  # the next hop's first periodic checkpoint
    # the sharded checkpoint as one file that from_pretrained reads
    assert main(["export", "--checkpoint", str(out), "--out", str(tmp_path / "export")]) == 0
    exported = maefast.from_pretrained(tmp_path / "export")
    assert sum(p.double().sum().item() for p in exported.parameters()) == pytest.approx(previous["params"], rel=1e-12)


def test_a_rank_killed_during_a_sharded_save_restarts_from_the_previous_checkpoint_to_the_same_weights(screen,
                                                                                                     tmp_path):
    """Rank 1 dies (SIGKILL) in the middle of the asynchronous save of step 4, after its shard file is written
    and before the checkpoint is committed. torchrun restarts the group, which resumes from step 2 (the save
    of step 4 left a partial directory that is never read) and ends with the weights of an uninterrupted run
    (run at the same time): the restart reproduces model, optimizer, data position and RNG states bitwise under
    FSDP2."""
    settings = ["run.parallel=fsdp", "run.max_steps=5", "run.checkpoint_every=2", "run.seed=3"]
    out = tmp_path / "killed"
    environment = {**ENV, "MAEFAST_TEST_KILL_DURING_SAVE": "1:4"}  # rank 1, the save of step 4, first attempt
    straight_command = torchrun(2, WORKER, "train", str(screen), str(tmp_path / "straight"), str(tmp_path / "a"),
                                *settings)
    with started(straight_command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as straight, \
            started(torchrun(2, WORKER, "train", str(screen), str(out), str(tmp_path / "b"), *settings, restarts=1),
                    env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as agent:
        output = agent.communicate(timeout=300)[0]
        assert agent.returncode == 0, output[-3000:]
        straight_output = straight.communicate(timeout=300)[0]
        assert straight.returncode == 0, straight_output[-3000:]
    assert "killed during the save of step 4" in output
    assert not Path(f"{tmp_path / 'b'}.0.0.json").exists()  # the first attempt did not finish
    resumed = reports(tmp_path / "b", 2, restart=1)
    assert [r["restored"]["step"] for r in resumed] == [2, 2] and resumed[0]["step"] == 5
    assert not list((out / "checkpoints").glob(".*.partial"))
    straight = load_file(tmp_path / "straight" / "encoder" / "model.safetensors")
    restarted = load_file(out / "encoder" / "model.safetensors")
    assert straight.keys() == restarted.keys()
    for key in straight:
        assert (straight[key] == restarted[key]).all(), key


def test_embedding_rerun_after_a_killed_rank_has_every_site_once(screen, screen_encoder, tmp_path):
    """Block-wise (every block of the 2-block encoder: one row per site and block), killed, rerun on 3 ranks:
    the merged table holds each site once per block, with the single-process job's features."""
    common = ["--checkpoint", str(screen_encoder), "--data", str(screen), "--shard-size", "2", "--batch-size", "1",
              "--workers", "0", "--backend", "torch", "--no-progress", "--blocks", "all"]
    out = tmp_path / "emb"
    with started(torchrun(2, "-m", "maefast.cli", "embed", *common, "--out", str(out)), env=ENV,
                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as agent:
        wait_for(out / "shards" / "shard-00000.parquet", agent)
        os.kill(children(agent.pid)[1], signal.SIGKILL)  # the second rank torchrun started
        agent.communicate(timeout=120)
    assert not (out / "manifest.json").exists()
    succeeds(torchrun(3, "-m", "maefast.cli", "embed", *common, "--out", str(out)))
    maefast.embed(screen_encoder, screen, tmp_path / "reference", shard_size=2, batch_size=1, workers=0,
                  backend="torch", show_progress=False, blocks="all")
    merged, reference = read_job(out), read_job(tmp_path / "reference")
    assert sorted(set(merged[BLOCK_COLUMN])) == [0, 1]
    for block in (0, 1):
        ids = merged.loc[merged[BLOCK_COLUMN] == block, "id"]
        assert sorted(ids) == sorted(open_dataset(screen).ids) and not ids.duplicated().any()
    merged = merged.set_index(["id", BLOCK_COLUMN]).loc[list(zip(reference["id"], reference[BLOCK_COLUMN]))]
    np.testing.assert_allclose(merged.filter(like="feature_").to_numpy(), reference.filter(like="feature_").to_numpy(),
                               rtol=1e-5, atol=1e-6)
