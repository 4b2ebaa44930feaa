"""The README's main job (launch/reward_demo.py) runs offline and reports what it should."""

import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_reward_demo_runs_and_scores():
    result = subprocess.run(
        [sys.executable, "launch/reward_demo.py", "--config.seed=3"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "Country: France\n  State: Ile-de-France" in out
    # 3 coordinate answers and 1 malformed answer per landmark.
    assert "format-valid rate 0.750" in out
    mean_reward = float(re.search(r"mean reward ([0-9.]+)", out).group(1))
    assert 0.4 < mean_reward < 0.75
    assert re.search(r"acc@2500km 0\.750", out)
