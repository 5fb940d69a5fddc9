"""research.predict and research.export on a run trained here: a small VGG (with
BatchNorm) on solid-colour squares with noise, whose classes any trained model tells
apart. Predictions are checked against the colours the images were made with; the
exported program against the live model, bit for bit."""

import csv
import json
import os
import pathlib
import subprocess
import sys
import tarfile
import zipfile

import jax
import numpy as np
from PIL import Image
import pytest

from conftest import REPO
import synthetic_data
from research import configs
from research import export
from research import inference
from research.training import loop

COLOURS = {"blue": (20, 40, 220), "green": (30, 200, 40), "red": (220, 30, 30)}
SIZE = 12


def colour_images(colour, count: int, seed: int, size=(SIZE, SIZE)) -> np.ndarray:
  """`count` squares of `colour` with per-pixel noise, uint8 (count, H, W, 3)."""
  noise = np.random.default_rng(seed).integers(-25, 26, (count, *size, 3))
  return np.clip(np.asarray(colour) + noise, 0, 255).astype(np.uint8)


def colour_splits() -> dict:
  splits = {}
  for split, count, seed in (("train", 16, 0), ("test", 4, 1)):
    images = [colour_images(rgb, count, seed + i) for i, rgb in enumerate(COLOURS.values())]
    labels = np.repeat(np.arange(len(COLOURS), dtype=np.int32), count)
    splits[split] = (np.concatenate(images), labels)
  return splits


def train_run(root: pathlib.Path, compute_dtype: str = "float32") -> pathlib.Path:
  """A finished run on the colour folder; its best checkpoint is not its last."""
  data = synthetic_data.write_image_tree(root / "colours", colour_splits(), list(COLOURS))
  c = configs.base_config()
  c.dataset, c.data_dir, c.model = "folder", str(data), "vgg"
  c.model_kwargs.widths, c.model_kwargs.convs_per_block = (4, 8), 1
  c.batch_size, c.num_epochs, c.learning_rate, c.eval_batch_size = 8, 3, 1e-2, 64
  c.validation_size, c.best_metric = 12, "validation_accuracy"
  c.compute_dtype, c.progress, c.final_train_eval = compute_dtype, False, False
  workdir = root / f"run-{compute_dtype}"
  loop.train_and_evaluate(c, str(workdir))
  return workdir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> pathlib.Path:
  root = tmp_path_factory.mktemp("deploy")
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("RESEARCH_CACHE_DIR", str(root / "cache"))
    return train_run(root)


def command(module: str, *args, cwd=REPO) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", f"research.{module}", *map(str, args)],
                        cwd=cwd, capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, PYTHONPATH=str(REPO)))


# --- research.export -------------------------------------------------------------------

def test_export_matches_the_live_model_bitwise(run_dir, tmp_path):
  result = command("export", f"--workdir={run_dir}", f"--out={tmp_path / 'model.bin'}")
  assert result.returncode == 0, result.stderr[-3000:]
  model = inference.restore(run_dir)
  meta = json.loads((tmp_path / "model.json").read_text())
  assert meta["class_names"] == list(COLOURS)
  assert meta["input"] == {**meta["input"], "shape": [None, SIZE, SIZE, 3], "dtype": "uint8"}
  assert meta["run"]["checkpoint_step"] == model.step
  assert meta["platforms"] == ["cpu", "cuda", "tpu"]
  from research import exported
  loaded = exported.load(tmp_path / "model.bin")
  for batch in (1, 37):
    images = np.random.default_rng(batch).integers(0, 256, (batch, SIZE, SIZE, 3), np.uint8)
    got, live = loaded(images), jax.device_get(model(images))
    assert got["logits"].shape == (batch, 3)
    for name in ("logits", "probabilities"):
      np.testing.assert_array_equal(got[name], live[name])


def test_exported_model_loads_without_the_model_code(run_dir, tmp_path):
  """The loader imports jax and numpy only: no flax, no research.models."""
  out = tmp_path / "model.bin"
  model = inference.restore(run_dir)
  exported_model = export.export_model(model)
  export.write(exported_model, export.metadata(model, exported_model, str(run_dir)), out)
  check = ("import sys, numpy as np\n"
           "from research import exported\n"
           f"model = exported.load({str(out)!r})\n"
           f"p = model(np.zeros((2, {SIZE}, {SIZE}, 3), np.uint8))['probabilities']\n"
           "assert p.shape == (2, 3) and np.allclose(p.sum(-1), 1), p\n"
           "print(sorted(m for m in sys.modules if m.split('.')[0] in "
           "('research', 'flax', 'orbax', 'optax')))\n")
  result = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO)))
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.split("\n")[0] == "['research', 'research.exported']"

