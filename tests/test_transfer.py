"""Transfer learning: config.init_from copies exactly the backbone (and a head for the
same classes), refuses another architecture with a message naming both runs, and says
why a run cannot start from a workdir."""

import json
import os
import subprocess
import sys

from flax import nnx
import jax
import numpy as np
import pytest

import synthetic_data
from conftest import REPO
from research import configs
from research import errors
from research import inference
from research.models import is_head
from research.training import loop
from research.training.state import create_run_model

CLASSES = ("a", "b", "c")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """A 3-class 8x8 RGB image folder: 24 train and 12 test images."""
  root = tmp_path_factory.mktemp("data")
  splits = {"train": synthetic_data.make_arrays(3, 8, (8, 8, 3), seed=0),
            "test": synthetic_data.make_arrays(3, 4, (8, 8, 3), seed=1)}
  return synthetic_data.write_image_tree(root / "tiny", splits, CLASSES)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
  monkeypatch.setenv("RESEARCH_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def _config(folder, **overrides):
  """A small VGG with BatchNorm, so that both parameters and statistics transfer."""
  c = configs.base_config()
  c.dataset, c.data_dir, c.model = "folder", str(folder), "vgg"
  c.model_kwargs.widths, c.model_kwargs.convs_per_block = (4, 8), 1
  c.batch_size, c.num_epochs, c.eval_batch_size = 8, 2, 16
  c.progress, c.final_train_eval, c.checkpoint_every_epochs = False, False, 0
  for key, value in overrides.items():
    c[key] = value
  return c


@pytest.fixture(scope="module")
def source(folder, tmp_path_factory):
  """A finished run on all three classes, its workdir."""
  workdir = tmp_path_factory.mktemp("source")
  with pytest.MonkeyPatch.context() as m:
    m.setenv("RESEARCH_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    loop.train_and_evaluate(_config(folder), workdir)
  return workdir


def _fresh_state(config, workdir):
  """The state that a run of `config` in `workdir` starts training from."""
  run = loop.setup(config, str(workdir))
  try:
    return run.state, run.dataset
  finally:
    run.checkpoints.close()
    run.writer.unlock()


def _flat(state) -> dict:
  return {path: np.asarray(v.get_value()) for path, v in nnx.to_flat_state(state)}


@pytest.mark.parametrize("classes, head_copied", [
    ((), True),                      # the same classes: the head too
    (("c", "b", "a"), False),        # the same count, other classes per output
    (("b", "c"), False)])            # fewer classes: another head shape
def test_init_from_copies_the_backbone_and_a_head_only_for_the_same_classes(
    folder, source, tmp_path, classes, head_copied):
  config = _config(folder, init_from=str(source), classes=classes, seed=7)
  state, dataset = _fresh_state(config, tmp_path)
  restored = inference.restore(source)
  old = {**_flat(restored.params), **_flat(restored.batch_stats)}
  new = {**_flat(state.params), **_flat(state.batch_stats)}
  fresh_model = create_run_model(config, dataset.image_shape, dataset.num_classes)
  fresh = {**_flat(nnx.state(fresh_model, nnx.Param)),
           **_flat(nnx.state(fresh_model, nnx.BatchStat))}
  assert set(new) == set(fresh) and any(is_head(p) for p in new)
  for path, value in new.items():
    expected = old[path] if head_copied or not is_head(path) else fresh[path]
    np.testing.assert_array_equal(value, expected, err_msg=str(path))
    if not is_head(path) and not np.array_equal(old[path], fresh[path]):
      assert not np.array_equal(value, fresh[path])
  report = json.loads((tmp_path / "transfer.json").read_text())
  assert report["head"].startswith("copied" if head_copied else "initialised")
  assert sorted(report["copied"]["arrays"] + report["initialised"]["arrays"]) == sorted(
      ".".join(map(str, p)) for p in new)
  assert ("head.kernel" in report["initialised"]["arrays"]) == (not head_copied)


def test_a_resumed_run_keeps_its_own_weights(folder, source, tmp_path):
  """init_from starts a fresh run only: re-running resumes from the run's checkpoint."""
  config = _config(folder, init_from=str(source), classes=("b", "c"), num_epochs=1)
  finished, _ = loop.run_training(config, str(tmp_path))
  config.num_epochs = 2
  resumed, _ = _fresh_state(config, tmp_path)
  jax.tree.map(np.testing.assert_array_equal, _flat(resumed.params),
               _flat(finished.params))


def test_another_architecture_is_refused_naming_both_runs(folder, source, tmp_path):
  config = _config(folder, init_from=str(source))
  config.model_kwargs.widths = (4, 6)
  with pytest.raises(errors.ConfigError) as e:
    _fresh_state(config, tmp_path / "wider")
  message = str(e.value)
  for part in (str(source), str(tmp_path / "wider"), "widths=(4, 8)", "widths=(4, 6)",
               "convs.1.kernel: (3, 3, 4, 8) in", "(3, 3, 4, 6) here", "config.model"):
    assert part in message


def test_a_workdir_without_a_finished_run_is_refused_at_run_start(folder, source,
                                                                  tmp_path):
  unfinished = tmp_path / "unfinished"
  unfinished.mkdir()
  (unfinished / "config.json").write_text((source / "config.json").read_text())
  configs.validate(_config(folder, init_from=str(tmp_path / "missing")))  # a sweep plans it
  for path, reason in ((tmp_path / "missing", "does not exist"),
                       (unfinished, "holds no finished run")):
    with pytest.raises(errors.ConfigError, match=reason):
      _fresh_state(_config(folder, init_from=str(path)), tmp_path / "run")


def test_the_command_line_exits_2_with_the_message(folder, tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "experiments.mnist_mlp", "--nosweep",
       f"--workdir={tmp_path / 'run'}", "--config.dataset=folder",
       f"--config.data_dir={folder}", f"--config.init_from={tmp_path / 'missing'}",
       "--config.batch_size=8"], cwd=REPO, capture_output=True, text=True, timeout=120,
      env=dict(os.environ, RESEARCH_CACHE_DIR=str(tmp_path / "cache")))
  assert result.returncode == 2, result.stderr[-2000:]
  assert f"config.init_from='{tmp_path / 'missing'}' does not exist" in result.stderr
