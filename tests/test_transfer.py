"""Transfer learning: config.init_from copies exactly the backbone (and a head for the
same classes), refuses another architecture with a message naming both runs, and says
why a run cannot start from a workdir (the command line turns these ConfigErrors into
exit code 2); config.freeze keeps a backbone bitwise fixed; config.train_per_class."""

import json

from flax import nnx
import jax
import numpy as np
import pytest

import synthetic_data
from research import configs
from research import errors
from research import inference
from research import optim
from research.models import HEAD, MODELS, is_head
from research.training import inputs
from research.training import loop
from research.training import preflight
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


def test_a_frozen_backbone_is_bitwise_unchanged_while_the_head_trains(folder, source,
                                                                     tmp_path):
  """Parameters and BatchNorm statistics of the backbone stay the source's through
  training; then re-running resumes the trained run instead of starting from the
  source again."""
  config = _config(folder, init_from=str(source), classes=("b", "c"), freeze="backbone",
                   num_epochs=1, learning_rate=0.1)
  trained, _ = loop.run_training(config, str(tmp_path))
  assert int(trained.step) == 2
  restored = inference.restore(source)
  old = {**_flat(restored.params), **_flat(restored.batch_stats)}
  new = {**_flat(trained.params), **_flat(trained.batch_stats)}
  fresh_model = create_run_model(config, (8, 8, 3), 2)
  fresh_head = _flat(nnx.state(fresh_model.head, nnx.Param))
  for path, value in new.items():
    if is_head(path):
      assert not np.array_equal(value, fresh_head[path[1:]]), path
    else:
      np.testing.assert_array_equal(value, old[path], err_msg=str(path))
  config.num_epochs = 2
  resumed, _ = _fresh_state(config, tmp_path)
  jax.tree.map(np.testing.assert_array_equal, _flat(resumed.params), _flat(trained.params))


def test_the_backbone_learning_rate_multiplier_and_freezing_scale_its_updates():
  params = {"head": {"kernel": np.ones((2, 2), np.float32)},
            "convs": {"kernel": np.ones((3, 3, 1, 2), np.float32)}}
  grads = jax.tree.map(np.ones_like, params)
  for settings, backbone_step in (({}, -0.1), ({"backbone_lr_multiplier": 0.5}, -0.05),
                                  ({"freeze": "backbone"}, 0.0)):
    config = configs.base_config()
    config.update(optimizer="sgd", learning_rate=0.1, **settings)
    tx, _ = optim.create_optimizer(config, steps_per_epoch=1)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["head"]["kernel"], -0.1)
    np.testing.assert_allclose(updates["convs"]["kernel"], backbone_step)


def test_train_per_class_takes_a_seeded_stratified_sample(folder):
  draws = []
  for seed in (0, 0, 1):
    dataset = inputs.load_data(_config(folder, train_per_class=3, seed=seed))
    assert np.bincount(dataset.train.labels).tolist() == [3, 3, 3]
    draws.append(dataset.train.images)
  np.testing.assert_array_equal(draws[0], draws[1])
  assert not np.array_equal(draws[0], draws[2])   # a new seed is a new draw
  with pytest.raises(errors.ConfigError, match="train_per_class=9 is more than the 8"):
    preflight.load_for_run(_config(folder, train_per_class=9))


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


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_registered_model_has_a_head_to_replace(name):
  """The head (models.HEAD) is each model's output layer: its kernel maps to the classes."""
  model = nnx.eval_shape(lambda: MODELS[name](input_shape=(32, 32, 3), num_classes=7,
                                              rngs=nnx.Rngs(params=0)))
  head = {p: v.shape for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
          if is_head(p)}
  assert head[(HEAD, "kernel")][-1] == 7
  assert set(head) <= {(HEAD, "kernel"), (HEAD, "bias")}   # airbench's head has no bias
  assert head.get((HEAD, "bias"), (7,)) == (7,)
