"""The training loop's measures: the share of an interval spent blocked on the loader (data_wait), counted on a
clock the test drives, and metrics.csv taking a new column when a run of an older maefast resumes."""
import csv

import pytest

from maefast.train.observe import ScalarLog, Throughput


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_data_wait_is_the_time_blocked_in_the_loader_over_the_interval():
    clock = Clock()
    meter = Throughput(flops_per_crop=10, tokens_per_crop=4, matmul_rate=1e3, world_size=1, clock=clock)

    def loader():  # each batch takes 0.5 s to arrive, the first 2 s
        for wait in (2.0, 0.5, 0.5):
            clock.now += wait
            yield wait

    batches = meter.batches(loader())
    for _ in range(2):
        next(batches)
        clock.now += 1.5  # the step
        meter.add(8)
    first = meter.report()  # 2 + 1.5 + 0.5 + 1.5 = 5.5 s, 2.5 of them waiting
    assert first["data_wait"] == pytest.approx(2.5 / 5.5) and first["crops_per_s"] == pytest.approx(16 / 5.5)
    next(batches)
    clock.now += 1.5
    assert meter.report()["data_wait"] == pytest.approx(0.5 / 2.0)
    assert list(batches) == []  # the loader's end ends the iteration
    clock.now += 3.0
    assert meter.report()["data_wait"] == 0


def test_a_resumed_run_of_an_older_maefast_gains_the_new_column(tmp_path):
    (tmp_path / "metrics.csv").write_text("step,loss,crops_per_s\n2,0.5,10.0\n4,0.4,11.0\n6,0.3,12.0\n")
    log = ScalarLog(tmp_path, resume_step=4)
    log.log(6, {"loss": 0.35, "crops_per_s": 12.5, "data_wait": 0.25})
    log.log(8, {"loss": 0.3, "crops_per_s": 13.0, "data_wait": 0.0})
    log.close()
    with open(tmp_path / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["step"] for row in rows] == ["2", "4", "6", "8"]
    assert [row["data_wait"] for row in rows] == ["", "", "0.25", "0.0"]
    assert rows[2]["loss"] == "0.35"
