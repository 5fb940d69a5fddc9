"""The notebooks run top to bottom in a real Jupyter kernel, so that they cannot rot. The
Colab notebook runs here as off Colab: its Colab cells skipped, the CPU, the smoke
variants and the data in $RESEARCH_DATA_DIR."""

import json

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


def _images(notebook) -> int:
  return sum("image/png" in o.get("data", {}) for c in notebook.cells
             for o in c.get("outputs", []))


def test_colab_notebook_runs_the_main_job_and_a_sweep_off_colab(data_dir, tmp_path,
                                                                 monkeypatch):
  monkeypatch.setenv("RESEARCH_DATA_DIR", str(data_dir))
  monkeypatch.setenv("NOTEBOOK_WORKDIR", str(tmp_path))
  notebook = _execute("colab.ipynb")
  text = _outputs(notebook)
  assert text.count("not on Colab: skipped") == 2            # the install and Drive cells
  assert "platform check passed: cpu" in text
  assert "main job: test accuracy" in text
  tables = [o["data"]["text/markdown"] for c in notebook.cells for o in c.get("outputs", [])
            if "text/markdown" in o.get("data", {})]
  assert len(tables) == 1 and "| none | 1 |" in tables[0] and "| crop+rotate+scale+wd | 1 |" in tables[0]
  assert _images(notebook) == 4   # the main job's curves and the sweep's three figures
  assert (tmp_path / "cifar_cnn" / "summary.json").exists()
  config = json.loads((tmp_path / "cifar_cnn" / "config.json").read_text())
  assert config["platform"] == "cpu"     # the runs check the backend themselves
  assert (tmp_path / "regularization" / "results.md").exists()


def test_interpret_notebook_draws_the_maps_of_the_main_job(data_dir, monkeypatch):
  monkeypatch.setenv("RESEARCH_DATA_DIR", str(data_dir))
  monkeypatch.delenv("RUN_DIR", raising=False)
  notebook = _execute("interpret.ipynb")
  assert _images(notebook) == 2   # the maps and the filters
  text = _outputs(notebook)
  assert "Grad-CAM: head only" in text and "completeness error" in text


@pytest.mark.parametrize("name", ["quickstart.ipynb", "studies.ipynb", "colab.ipynb",
                                  "interpret.ipynb"])
def test_notebooks_are_committed_without_outputs(name):
  notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
  assert all(not c.get("outputs") for c in notebook.cells if c.cell_type == "code")

