"""research.predict and research.export on a run trained here: a small VGG (with
BatchNorm) on solid-colour squares with noise, whose classes any trained model tells
apart. Predictions are checked against the colours the images were made with; the
exported program against the live model, bit for bit."""

import csv
import json
import os
import pathlib
import re
import shutil
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
from research import losses
from research import predict
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
  p = np.asarray(losses.probabilities("binary_cross_entropy", logits))
  z = logits[:, 0].astype(np.float64)
  np.testing.assert_allclose(p[:, 1], 1 / (1 + np.exp(-z)), rtol=1e-6)
  # sigmoid(-z), not 1 - sigmoid(z), which rounds to 0 for z = 40
  np.testing.assert_allclose(p[:, 0], 1 / (1 + np.exp(z)), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(losses.probabilities(
      "cross_entropy", np.array([[1.0, 1.0]], np.float32))), [[0.5, 0.5]])


# --- research.predict ------------------------------------------------------------------

def write_photos(root: pathlib.Path) -> tuple[list[pathlib.Path], dict[str, str]]:
  """Photos of the three colours in other sizes and modes (JPEG, RGBA, palette, BMP), in
  a folder, a tar.gz and a zip, among files that are not images. Returns (the paths to
  give predict, {where predict names each image: its colour})."""
  folder, loose = root / "photos", root / "loose"
  (folder / "sub").mkdir(parents=True)
  loose.mkdir()
  Image.new("RGB", (300, 200), COLOURS["red"]).save(folder / "red.jpg")
  Image.new("RGBA", (50, 30), COLOURS["green"] + (255,)).save(folder / "sub" / "green.png")
  Image.new("RGB", (20, 20), COLOURS["blue"]).convert("P").save(folder / "sub" / "blue.gif")
  (folder / "notes.txt").write_text("not an image")
  (folder / ".DS_Store").write_bytes(b"\0\0")                    # left out silently
  jpeg = (folder / "red.jpg").read_bytes()
  (folder / "broken.jpg").write_bytes(jpeg[:len(jpeg) // 3])    # truncated
  Image.new("RGB", (SIZE, SIZE), COLOURS["blue"]).save(loose / "blue.png")
  Image.new("RGB", (16, 9), COLOURS["red"]).save(loose / "red.bmp")
  synthetic_data.write_tar(loose, root / "more.tar.gz", mode="w:gz")
  with zipfile.ZipFile(root / "more.zip", "w") as archive:
    archive.write(folder / "sub" / "green.png", "pics/green.png")
    archive.writestr("__MACOSX/pics/._green.png", b"resource fork")
  truth = {f"{folder}/red.jpg": "red", f"{folder}/sub/blue.gif": "blue",
           f"{folder}/sub/green.png": "green", f"{root}/more.tar.gz:blue.png": "blue",
           f"{root}/more.tar.gz:red.bmp": "red", f"{root}/more.zip:pics/green.png": "green"}
  return [folder, root / "more.tar.gz", root / "more.zip", root / "missing.png"], truth


def test_predict_names_the_colours_of_photos_and_skips_bad_files(run_dir, tmp_path):
  paths, truth = write_photos(tmp_path)
  result = command("predict", f"--workdir={run_dir}", "--top_k=5",
                   f"--output={tmp_path / 'out' / 'preds.csv'}", *paths)
  assert result.returncode == 0, result.stderr[-3000:]
  printed = dict(line.rsplit(": ", 1) for line in result.stdout.splitlines())
  assert set(printed) == set(truth)
  for where, colour in truth.items():
    top = printed[where].split(", ")
    assert len(top) == 3 and top[0].split()[0] == colour, (where, top)
  skipped = [line for line in result.stderr.splitlines() if line.startswith("skipped")]
  assert len(skipped) == 3, result.stderr
  assert f"cannot decode image {tmp_path}/photos/notes.txt" in skipped[1]
  assert f"cannot decode image {tmp_path}/photos/broken.jpg" in skipped[0]
  assert skipped[2] == f"skipped {tmp_path}/missing.png: no such file or folder"
  assert "DS_Store" not in result.stderr and "MACOSX" not in result.stderr
  assert f"6 image(s) predicted with checkpoint step 4 of {run_dir}, 3 skipped" in result.stderr
  with open(tmp_path / "out" / "preds.csv", newline="") as f:
    rows = list(csv.reader(f))
  assert rows[0] == ["image", "class_1", "probability_1", "class_2", "probability_2",
                     "class_3", "probability_3"]
  assert {row[0]: row[1] for row in rows[1:]} == truth
  for row in rows[1:]:
    probabilities = [float(p) for p in row[2::2]]
    assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1.0001
    assert sorted(row[1::2]) == sorted(COLOURS)


def test_predict_exits_1_when_no_image_could_be_predicted(run_dir, tmp_path):
  (tmp_path / "notes.txt").write_text("not an image")
  result = command("predict", f"--workdir={run_dir}", tmp_path / "notes.txt",
                   tmp_path / "gone.jpg")
  assert result.returncode == 1, result.stderr[-3000:]
  assert f"cannot decode image {tmp_path}/notes.txt" in result.stderr
  assert f"skipped {tmp_path}/gone.jpg: no such file or folder" in result.stderr
  assert result.stdout == "" and "0 image(s) predicted" in result.stderr


def test_predict_writes_jsonl_and_batches_do_not_change_the_result(run_dir, tmp_path):
  paths, truth = write_photos(tmp_path)
  model = inference.restore(run_dir)
  by_batch = {size: [r for r in predict.predict(model, predict.image_files(paths), 2, size)
                     if isinstance(r, predict.Prediction)] for size in (4, 64)}
  assert [p.image for p in by_batch[4]] == [p.image for p in by_batch[64]]
  for a, b in zip(*by_batch.values()):
    assert [name for name, _ in a.top] == [name for name, _ in b.top]
    np.testing.assert_allclose([p for _, p in a.top], [p for _, p in b.top], rtol=1e-5)
  predict.write_output(by_batch[4], tmp_path / "preds.jsonl")
  rows = [json.loads(line) for line in (tmp_path / "preds.jsonl").read_text().splitlines()]
  assert {row["image"]: row["top"][0]["class"] for row in rows} == truth
  assert all(len(row["top"]) == 2 for row in rows)


def test_predict_with_a_bfloat16_run_on_the_cpu(run_dir, tmp_path):
  """A run trained in bfloat16 keeps float32 checkpoints; its model computes in bfloat16
  on the CPU too, and tells the colours apart as the float32 one does."""
  workdir = tmp_path / "bf16"
  shutil.copytree(run_dir, workdir)
  config = json.loads((workdir / "config.json").read_text())
  (workdir / "config.json").write_text(json.dumps({**config, "compute_dtype": "bfloat16"}))
  f32, bf16 = inference.restore(run_dir), inference.restore(workdir)
  assert bf16.config.compute_dtype == "bfloat16"
  images = np.concatenate([colour_images(rgb, 2, seed=9) for rgb in COLOURS.values()])
  a, b = jax.device_get(f32(images)), jax.device_get(bf16(images))
  assert b["logits"].dtype == np.float32 and not np.array_equal(a["logits"], b["logits"])
  np.testing.assert_array_equal(b["probabilities"].argmax(-1), np.repeat(np.arange(3), 2))
  np.testing.assert_allclose(a["probabilities"], b["probabilities"], atol=0.03)


def test_runs_without_data_json_read_their_dataset(run_dir, tmp_path, monkeypatch, capsys):
  monkeypatch.setenv("RESEARCH_CACHE_DIR", str(tmp_path / "cache"))
  workdir = tmp_path / "older"
  shutil.copytree(run_dir, workdir)
  (workdir / "data.json").unlink()
  model = inference.restore(workdir)
  assert model.class_names == tuple(COLOURS) and model.image_shape == (SIZE, SIZE, 3)
  assert model.image_dtype == np.uint8
  assert f"{workdir} has no data.json" in capsys.readouterr().err
