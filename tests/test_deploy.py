"""research.predict and research.export on a run trained here: a small VGG (with
BatchNorm) on solid-colour squares with noise, whose classes any trained model tells
apart. Predictions are checked against the colours the images were made with; the
exported program against the live model, bit for bit."""

import csv
import json
import os
import pathlib
import re
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
from research import errors
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


def code_block(doc: str, language: str, containing: str) -> str:
  blocks = re.findall(rf"```{language}\n(.*?)```", (REPO / doc).read_text(), re.S)
  [block] = [b for b in blocks if containing in b]
  return block


def run_python(code: str, cwd) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True,
                        text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO)))


# What a fresh process imported besides jax and numpy.
IMPORTED = ("import sys\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('research', 'flax', 'orbax', 'optax')))\n")


# --- research.export -------------------------------------------------------------------

@pytest.fixture(scope="module")
def exported_dir(run_dir, tmp_path_factory) -> pathlib.Path:
  out = tmp_path_factory.mktemp("export")
  result = command("export", f"--workdir={run_dir}", f"--out={out / 'model.bin'}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "exported vgg (checkpoint step 4 of" in result.stdout
  return out


def test_exported_logits_equal_the_live_models_bitwise(run_dir, exported_dir):
  """research/exported.py, in a process that imports no model code, gives bitwise the
  logits of the run's model rebuilt here, for a batch of 1 and of 37."""
  batches = {n: np.random.default_rng(n).integers(0, 256, (n, SIZE, SIZE, 3), np.uint8)
             for n in (1, 37)}
  for n, images in batches.items():
    np.save(exported_dir / f"images{n}.npy", images)
  result = run_python(
      "import numpy as np\n"
      "from research import exported\n"
      "model = exported.load('model.bin')\n"
      "for n in (1, 37):\n"
      "  out = model(np.load(f'images{n}.npy'))\n"
      "  np.save(f'logits{n}.npy', out['logits'])\n"
      "  np.save(f'probabilities{n}.npy', out['probabilities'])\n" + IMPORTED, exported_dir)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.splitlines()[-1] == "['research', 'research.exported']"
  model = inference.restore(run_dir)
  assert model.step == json.loads((run_dir / "summary.json").read_text())["best"]["step"]
  for n, images in batches.items():
    live = jax.device_get(model(images))
    for name in ("logits", "probabilities"):
      got = np.load(exported_dir / f"{name}{n}.npy")
      assert got.shape == (n, 3) and got.dtype == np.float32
      np.testing.assert_array_equal(got, live[name])


def test_export_metadata_describes_the_input_and_the_run(run_dir, exported_dir):
  meta = json.loads((exported_dir / "model.json").read_text())
  config = json.loads((run_dir / "config.json").read_text())
  assert meta["class_names"] == list(COLOURS)
  assert meta["input"]["shape"] == [None, SIZE, SIZE, 3] and meta["input"]["dtype"] == "uint8"
  assert meta["preprocessing"]["mean"] == config["normalize_mean"]
  assert meta["preprocessing"]["std"] == config["normalize_std"]
  assert meta["outputs"]["probability"] == "softmax"
  assert meta["platforms"] == ["cpu", "cuda", "tpu"]
  assert meta["run"]["checkpoint_step"] == 4
  with pytest.raises(errors.ConfigError, match="overwritten by its own metadata"):
    export.write(None, meta, exported_dir / "model.json")


def test_docs_standalone_snippet_runs_with_jax_alone(exported_dir):
  """docs/deploy.md's snippet, which uses no code of this project, on a photo of
  another size: it names the photo's colour first."""
  Image.new("RGB", (64, 48), COLOURS["green"]).save(exported_dir / "photo.jpg")
  snippet = code_block("docs/deploy.md", "python", "export.deserialize")
  result = run_python(snippet + IMPORTED, exported_dir)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.splitlines()
  assert lines[0].split()[0] == "green" and len(lines) == 4
  assert lines[-1] == "[]"


def test_one_unit_head_gives_sigmoid_probabilities_for_two_classes():
  logits = np.array([[-3.0], [0.0], [40.0]], np.float32)
  p = np.asarray(inference.probabilities(logits, num_classes=2))
  z = logits[:, 0].astype(np.float64)
  np.testing.assert_allclose(p[:, 1], 1 / (1 + np.exp(-z)), rtol=1e-6)
  # sigmoid(-z), not 1 - sigmoid(z), which rounds to 0 for z = 40
  np.testing.assert_allclose(p[:, 0], 1 / (1 + np.exp(z)), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(inference.probabilities(
      np.array([[1.0, 1.0]], np.float32), num_classes=2)), [[0.5, 0.5]])
