"""The README's commands, taken from its text, so that the manual and the code cannot drift.

The quick start's smoke run, the evaluation of its workdir, the grid sweep and the own
photos walkthrough (docs/own_data.md) run as the manual gives them, with only the workdir
(and the sizes) changed. The set-up and test commands are CI's (.ci/run); the main job
takes a quarter of an hour or more, so its smoke variant stands in for it; the studies'
smoke sweeps run in tests/test_studies.py. Every other command in the README and docs is
checked without running it: its module, variant and config keys exist. Links must lead
to files and headings that exist."""

import importlib
import importlib.util
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from conftest import REPO

DOCS = ("README.md", "docs/studies/README.md", "docs/performance.md",
        "docs/several_hosts.md", "docs/data.md", "docs/own_data.md",
        "docs/binary_tasks.md", "docs/deploy.md", "docs/airbench.md", "docs/transfer.md",
        "docs/interpret.md", "docs/compression.md")


def commands(text: str) -> list[list[str]]:
  """Every `python -m PACKAGE.MODULE ...` in the text's code, as an argument list, cut at
  shell operators; placeholder commands (`experiments.NAME`) are left out."""
  blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
  inline = re.findall(r"`([^`]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
  code = blocks + [span.replace("\n", " ") for span in inline]
  found = []
  for block in code:
    for line in block.replace("\\\n", " ").splitlines():
      for start in re.finditer(r"python -m (experiments|benchmarks|research)\.[a-z_]+\b", line):
        rest = re.split(r"\s(?:&&|\|\||;|\||>)\s|;", line[start.start():])[0]
        if rest.count("'") % 2:   # the end of a quoted remote command, e.g. gcloud's
          rest = rest[:rest.rindex("'")]
        argv = shlex.split(rest, comments=True)
        if argv not in found:
          found.append(argv)
  return found


def readme_command(*must_have: str, must_not: str = "",
                   doc: str = "README.md") -> list[str]:
  """The one command of `doc` that contains all of `must_have` (and not `must_not`)."""
  matches = [argv for argv in commands((REPO / doc).read_text())
             if all(any(word in arg for arg in argv) for word in must_have)
             and not any(must_not and must_not in arg for arg in argv)]
  assert len(matches) == 1, f"{doc} commands with {must_have}: {matches}"
  return matches[0]


def with_flag(argv: list[str], flag: str, value: str) -> list[str]:
  """`argv` with `--flag VALUE` or `--flag=VALUE` replaced by `--flag=value`."""
  out, skip = [], False
  for arg in argv:
    if skip:
      skip = False
    elif arg == flag:
      skip = True
    elif not arg.startswith(flag + "="):
      out.append(arg)
  assert len(out) < len(argv), f"{flag} is not in {argv}"
  return out + [f"{flag}={value}"]


def run(argv: list[str], data_dir) -> subprocess.CompletedProcess:
  assert argv[:2] == ["python", "-m"]
  result = subprocess.run([sys.executable, *argv[1:]], cwd=REPO, capture_output=True,
                          text=True, timeout=300,
                          env=dict(os.environ, RESEARCH_DATA_DIR=str(data_dir)))
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  return result


def test_quick_start_smoke_run_then_eval_on_its_workdir(data_dir, tmp_path):
  train = readme_command(":smoke", "--workdir", must_not="mode=eval")
  evaluate = readme_command(":smoke", "--config.mode=eval")
  assert [arg for arg in evaluate if arg != "--config.mode=eval"] == train
  workdir = tmp_path / "smoke"
  trained = run(with_flag(train, "--workdir", str(workdir)), data_dir).stdout
  assert "eta" in trained   # not a TTY here: progress comes as plain lines with an ETA
  summary = json.loads((workdir / "summary.json").read_text())
  before = {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()}

  out = run(with_flag(evaluate, "--workdir", str(workdir)), data_dir).stdout
  assert f"checkpoint step {summary['steps']}: test accuracy " \
         f"{summary['test_accuracy']:.2%}" in out, out[-2000:]
  assert {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()} == before


def test_grid_sweep_example_runs_every_point(data_dir, tmp_path):
  argv = readme_command("--grid", "mnist_mlp")
  grid = json.loads(next(a.split("=", 1)[1] for a in argv if a.startswith("--grid=")))
  module = argv[2].split(".")[1]
  # The README's sweep at the smoke size: one seed, the smoke variant's data and epochs.
  argv = with_flag(with_flag(argv, "--seeds", "1"), "--workdir", str(tmp_path))
  argv.insert(3, f"--config=experiments/{module}.py:smoke")
  run(argv, data_dir)

  points = _product(grid)
  configs = [json.loads(p.read_text()) for p in tmp_path.glob("*/seed_0/config.json")]
  assert len(configs) == len(points)
  for point in points:  # each point ran once, with its values
    assert sum(all(_lookup(c, k) == v for k, v in point.items()) for c in configs) == 1, point
  rows = (tmp_path / "results.csv").read_text().splitlines()[1:]
  assert len(rows) == len(points)
  assert (tmp_path / "results.md").exists()


def _photo(rng, size, mode, bright_top: bool) -> Image.Image:
  """A noisy photo whose class is which half is bright (top or bottom, which the main
  job's flips keep), in any size and mode."""
  height, width = size
  pixels = rng.integers(0, 60, (height, width, 3))
  half = slice(0, height // 2) if bright_top else slice(height // 2, height)
  pixels[half] += 180
  image = Image.fromarray(pixels.astype(np.uint8))
  return image.convert(mode) if mode != "RGB" else image


def _photo_tree(root, counts: dict, seed: int) -> None:
  rng = np.random.default_rng(seed)
  sizes, modes = [(40, 30), (72, 96), (64, 64), (33, 50)], ["RGB", "L", "RGBA", "P"]
  for split, per_class in counts.items():
    for label, name in enumerate(("cat", "dog")):
      folder = root / split / name if split else root
      folder.mkdir(parents=True, exist_ok=True)
      for i in range(per_class):
        photo = _photo(rng, sizes[i % 4], modes[i % 4], bright_top=label == 0)
        suffix = ".jpg" if photo.mode in ("RGB", "L") else ".png"
        photo.save(folder / f"{name if not split else ''}{i:03d}{suffix}")


# The walkthrough at a test's size: a quarter of the VGG's widths on 16x16 images, 3 epochs.
SMALL = ["--config.model_kwargs.width_multiplier=0.25", "--config.num_epochs=3", "--config.batch_size=16",
         "--config.warmup_epochs=0", "--config.eval_batch_size=64"]


def test_own_photos_walkthrough_train_choose_predict_export(tmp_path):
  """docs/own_data.md's 'From a folder of photos to an exported model', command by
  command, on photos of mixed sizes and modes whose class is known."""
  photos, new = tmp_path / "photos", tmp_path / "new_photos"
  _photo_tree(photos, {"train": 40, "test": 10}, seed=0)
  _photo_tree(new, {"": 4}, seed=1)        # cat000.jpg ... dog003.png, loose in one folder

  def step(*must_have):
    argv = readme_command(*must_have, doc="docs/own_data.md")
    for flag, value in (("--workdir", str(tmp_path / "runs" / argv[argv.index("--workdir") + 1]
                                          .split("/")[-1]) if "--workdir" in argv else None),
                        ("--config.data_dir", str(photos))):
      if value and any(a.startswith(flag) for a in argv):
        argv = with_flag(argv, flag, value)
    return argv

  train = step("--config.image_size", "--config.best_metric")
  run(with_flag(train, "--config.image_size", "(16, 16)") + SMALL, tmp_path)
  workdir = tmp_path / "runs" / "photos"
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["validation_per_class"].keys() == {"cat", "dog"}
  assert (workdir / "confusion_matrix.png").read_bytes().startswith(b"\x89PNG")

  sweep = step("--grid", "experiments.cifar_cnn")
  run(with_flag(sweep, "--config.image_size", "(16, 16)") + SMALL + ["--parallel=2"], tmp_path)
  assert "Chosen on validation accuracy: **learning_rate=" in \
      (tmp_path / "runs" / "photos_lr" / "results.md").read_text()

  predict = [a if a != "new_photos/" else str(new) for a in step("research.predict")]
  predict = with_flag(predict, "--output", str(tmp_path / "preds.csv"))
  run(predict, tmp_path)
  rows = (tmp_path / "preds.csv").read_text().splitlines()[1:]
  assert len(rows) == 8
  for row in rows:     # each new photo's top class is its true one
    image, top_class = row.split(",")[:2]
    assert pathlib.Path(image).name.startswith(top_class), row

  export = with_flag(step("research.export"), "--out", str(tmp_path / "model.bin"))
  run(export, tmp_path)
  from research import exported
  model = exported.load(tmp_path / "model.bin")
  images = np.stack([np.asarray(_photo(np.random.default_rng(2), (16, 16), "RGB", top))
                     for top in (True, False)])
  probabilities = model(images)["probabilities"]
  assert [model.class_names[i] for i in probabilities.argmax(-1)] == ["cat", "dog"]


def _product(grid: dict) -> list[dict]:
  points = [{}]
  for key, values in grid.items():
    points = [dict(p, **{key: v}) for p in points for v in values]
  return points


def _lookup(config: dict, key: str):
  for part in key.split("."):
    config = config[part]
  return config


@pytest.mark.parametrize("doc", DOCS)
def test_every_command_names_a_module_variant_and_keys_that_exist(doc):
  """The commands that are too long to run here (the main job, the studies, the
  benchmarks) at least parse: a typo in a module, variant or key fails this test."""
  argv_list = commands((REPO / doc).read_text())
  assert argv_list, doc
  for argv in argv_list:
    module = argv[2]
    assert importlib.util.find_spec(module), (doc, argv)
    if not module.startswith("experiments."):
      continue
    variants = [a.split(":", 1)[1] for a in argv if a.startswith("--config=")]
    config = importlib.import_module(module).get_config(*variants)
    for arg in argv:
      if arg.startswith("--config."):
        key = arg[len("--config."):].split("=", 1)[0]
        assert _has_key(config, key), f"{doc}: {' '.join(argv)}: no config key {key}"
      if arg.startswith("--grid="):
        for key in json.loads(arg.split("=", 1)[1]):
          assert _has_key(config, key), f"{doc}: {' '.join(argv)}: no config key {key}"


def _has_key(config, key: str) -> bool:
  for part in key.split("."):
    if part not in config:
      return False
    config = config[part]
  return True


@pytest.mark.parametrize("doc", DOCS + ("docs/checkpoints.md", "docs/sweeps.md"))
def test_links_lead_to_files_and_headings_that_exist(doc):
  path = REPO / doc
  text = path.read_text()
  for target in re.findall(r"\]\(([^)\s]+)\)", text):
    if target.startswith(("http://", "https://")):
      continue
    file, _, anchor = target.partition("#")
    linked = (path.parent / file).resolve() if file else path
    assert linked.exists(), f"{doc} links to {target}"
    if anchor and linked.suffix == ".md":
      headings = re.findall(r"^#+ (.+)$", linked.read_text(), re.M)
      slugs = {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}
      assert anchor in slugs, f"{doc} links to {target}; headings: {sorted(slugs)}"
