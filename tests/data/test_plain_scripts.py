"""The loaders from a plain script, as a newcomer writes one: without `if __name__ == "__main__":` the work runs in
the script's process (worker processes would re-run the script) with a warning naming the guard; with the guard,
in worker processes. Each script runs in its own Python process, as a user's does."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORK = textwrap.dedent("""\
    from maefast.data import make_loader, open_dataset
    from maefast.data.synthetic import synth_screen

    def load():
        synth_screen("screen", num_genes=4, replicates=1, num_plates=1, num_experiments=1, controls_per_plate=1,
                     sites_per_well=1, size=64, progress=False)
        loader = make_loader(open_dataset("screen"), batch_size=2, crop_size=32, backend="torch", num_workers=2)
        crops = sum(len(batch["ids"]) for batch in loader)
        print(f"{crops} crops with {loader.backend.loader.num_workers} worker processes")
    """)


@pytest.mark.parametrize("guarded", [False, True])
def test_a_plain_script_loads(tmp_path, guarded):
    script = tmp_path / "script.py"
    script.write_text(WORK + ('if __name__ == "__main__":\n    load()\n' if guarded else "load()\n"))
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    if guarded:
        assert result.stdout.strip() == "5 crops with 2 worker processes" and "UserWarning" not in result.stderr
    else:
        assert result.stdout.strip() == "5 crops with 0 worker processes"
        assert (f"UserWarning: the PyTorch loader works in this process instead of 2 worker process(es): {script} "
                f"calls it from its top-level code, which every new process would run again; put that code under "
                f'`if __name__ == "__main__":` to use the workers') in result.stderr
