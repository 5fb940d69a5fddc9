"""The notebooks run top to bottom in a real Jupyter kernel, so that they cannot rot. The
Colab TPU notebook needs a TPU: here it is only checked to be a valid notebook whose
Python parses."""

import ast

import nbformat
from nbclient import NotebookClient
import pytest

from conftest import REPO

NOTEBOOKS = REPO / "notebooks"


def _execute(name: str) -> nbformat.NotebookNode:
  notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
  NotebookClient(notebook, timeout=300, kernel_name="python3",
                 resources={"metadata": {"path": str(REPO)}}).execute()
  return notebook


def _outputs(notebook) -> str:
  texts = []
  for cell in notebook.cells:
    for output in cell.get("outputs", []):
      texts.append(output.get("text", ""))
      texts.extend(str(v) for v in output.get("data", {}).values())
  return "\n".join(texts)


def test_quickstart_trains_the_mlp_and_plots(data_dir, monkeypatch):
  monkeypatch.setenv("RESEARCH_DATA_DIR", str(data_dir))
  notebook = _execute("quickstart.ipynb")
  text = _outputs(notebook)
  assert "test accuracy" in text and "plot written to" in text
  assert any("image/png" in o.get("data", {}) for c in notebook.cells
             for o in c.get("outputs", []))


def test_studies_notebook_runs_a_smoke_sweep_and_draws_it(data_dir, monkeypatch):
  monkeypatch.setenv("RESEARCH_DATA_DIR", str(data_dir))
  monkeypatch.delenv("STUDY_DIR", raising=False)
  notebook = _execute("studies.ipynb")
  text = _outputs(notebook)
  assert "results.csv" in text and "seed 0: train" in text
  images = sum("image/png" in o.get("data", {}) for c in notebook.cells
               for o in c.get("outputs", []))
  assert images >= 4  # the sweep's three figures and the notebook's own


def test_colab_tpu_notebook_is_valid_and_parses():
  notebook = nbformat.read(NOTEBOOKS / "colab_tpu.ipynb", as_version=4)
  nbformat.validate(notebook)
  for cell in notebook.cells:
    if cell.cell_type == "code":  # IPython magics and shell lines are not Python
      ast.parse("\n".join(line for line in cell.source.splitlines()
                          if not line.lstrip().startswith(("!", "%"))))
  assert 'get_config("full")' in notebook.cells[-3].source


@pytest.mark.parametrize("name", ["quickstart.ipynb", "studies.ipynb", "colab_tpu.ipynb"])
def test_notebooks_are_committed_without_outputs(name):
  notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
  assert all(not c.get("outputs") for c in notebook.cells if c.cell_type == "code")

