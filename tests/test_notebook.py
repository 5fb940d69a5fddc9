"""The quick-start notebook runs top to bottom (its code cells, in a fresh process)."""

import json
import os
import subprocess
import sys

from conftest import REPO


def test_quickstart_notebook_runs(data_dir):
  notebook = json.loads((REPO / "notebooks" / "quickstart.ipynb").read_text())
  code = "\n\n".join("".join(c["source"]) for c in notebook["cells"]
                     if c["cell_type"] == "code")
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=300,
                          env=dict(os.environ, RESEARCH_DATA_DIR=str(data_dir)))
  assert result.returncode == 0, result.stderr[-3000:]
  assert "test accuracy" in result.stdout
  assert "plot written to" in result.stdout or "Image" in result.stdout
