"""The README's quickstart runs as written and answers correctly about the image it generates."""

import random
import re
import subprocess
import sys
from pathlib import Path

from vlmhub.data.scenes import NUMBERS, sample_scene

README = Path(__file__).parents[1] / "README.md"


def test_quickstart_runs_and_answers(tmp_path):
    code = re.search(r"## Quickstart\n\n```python\n(.*?)```", README.read_text(), re.S).group(1)
    (tmp_path / "quickstart.py").write_text(code)
    result = subprocess.run([sys.executable, "quickstart.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    shapes = sample_scene(random.Random(3))  # the scene the quickstart draws (the model counts 81% of held-out scenes right)
    assert result.stdout.strip().splitlines()[-1] == NUMBERS[len(shapes)]
