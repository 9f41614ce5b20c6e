"""`maefast demo` end to end on a tiny profile: every system trained, embedded, mapped and scored."""
import pandas as pd

from maefast.demo import Profile, run_demo

TINY = Profile(genes=24, replicates=2, plates=2, site_size=128, steps=8, batch_size=8)


def test_demo_scores_every_system_and_resumes(tmp_path, capsys):
    table = run_demo(tmp_path, TINY)
    methods = ["MAE ViT", "CA-MAE ViT", "MU-Net", "Weakly supervised ViT", "Hand-crafted features", "Random ViT",
               "CA-MAE on JUMP (5 channels, reordered)"]
    assert list(table.index) == methods
    assert list(table.columns) == ["CORUM", "HuMAP", "Reactome", "SIGNOR", "StringDB"]
    results = pd.read_csv(tmp_path / "results.csv")
    assert set(results["method"]) == set(methods) and (results["n_pairs"] > 0).any()
    assert ((results["recall_0.05_0.95"].dropna() >= 0) & (results["recall_0.05_0.95"].dropna() <= 1)).all()
    assert (tmp_path / "recall_bars.png").stat().st_size > 5000
    assert "| MAE ViT |" in (tmp_path / "results.md").read_text()
    checkpoints = sorted((tmp_path / "runs").rglob("model.safetensors"))
    again = run_demo(tmp_path, TINY)  # resumes: nothing is trained or embedded again
    pd.testing.assert_frame_equal(again, table)
    assert sorted((tmp_path / "runs").rglob("model.safetensors")) == checkpoints
