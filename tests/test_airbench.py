"""The speed-run recipe's building blocks (issue 16, experiments/airbench.py): each trick
on tiny synthetic data, and the recipe's code path end to end."""

import dataclasses
import functools
import json
import shutil
import subprocess
import sys

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import REPO
from experiments import airbench as recipe
from research import configs
from research import errors
from research import inference
from research import optim
from research import preprocess
from research.models import airbench
from research.models import MODELS
from research.models import create_model
from research.training import averaging
from research.training import loop
from research.training.state import TrainState, create_train_state
from research.training.step import StepConfig, eval_step, train_step


def correlated_images(n=24, size=12, seed=0) -> np.ndarray:
  """Images whose channels and neighbouring pixels are strongly correlated."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, size + 1, size + 1, 3))
  x = x[:, 1:, 1:] + 0.8 * x[:, :-1, :-1]        # spatial correlation
  return x @ np.array([[1.0, 0.9, 0.5], [0, 0.5, 0.3], [0, 0, 0.4]])   # across channels


def test_whitening_layer_whitens_the_training_patches():
  images = correlated_images()
  model = create_model("airbench", input_shape=images.shape[1:], num_classes=3,
                       widths=(4, 4, 4), whitening_eps=1e-9)
  model.init_from_data(images)
  out = np.asarray(model.whiten(jnp.asarray(images, jnp.float32))
                   - model.whiten_bias[...]).reshape(-1, 24)
  positive, negative = out[:, :12], out[:, 12:]
  np.testing.assert_allclose(positive.T @ positive / len(out), np.eye(12), atol=2e-3)
  np.testing.assert_allclose(negative, -positive)
  raw = airbench.patch_covariance(images)     # what it started from was far from white
  assert np.abs(raw - np.eye(12)).max() > 0.5


def test_whitening_filters_are_state_not_parameters():
  model = nnx.eval_shape(lambda: airbench.Airbench(
      input_shape=(16, 16, 1), num_classes=3, rngs=nnx.Rngs(params=0), widths=(4, 4, 4)))
  _, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  assert "whiten_kernel" in stats and "whiten_kernel" not in params
  assert "scale" not in params["blocks"][0]["norm1"]          # frozen BatchNorm scales


def test_without_whitening_the_first_layer_is_a_trained_conv():
  """model_kwargs.whiten=False, the ablation's: the same 2x2 layer, now a parameter from
  PyTorch's default initialisation, which the data does not set."""
  images = correlated_images()
  model = create_model("airbench", input_shape=images.shape[1:], num_classes=3,
                       widths=(4, 4, 4), whiten=False)
  before = np.asarray(model.whiten_kernel[...])
  model.init_from_data(images)
  np.testing.assert_array_equal(model.whiten_kernel[...], before)
  assert before.shape == (2, 2, 3, 24) and np.abs(before).max() > 0
  _, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  assert "whiten_kernel" in params and "whiten_kernel" not in stats


def test_a_run_saved_before_a_model_option_resumes_under_its_default():
  """A config.json from before `model_kwargs.whiten` existed: today's recipe (whiten=True,
  the model's default) changes nothing; whiten=False is a change, refused."""
  from research.training import resume
  config = recipe.get_config("smoke")
  saved = json.loads(config.to_json_best_effort())
  del saved["model_kwargs"]["whiten"]
  assert resume.changed_keys(saved, config) == {}
  config.model_kwargs.whiten = False
  changes = resume.changed_keys(saved, config)
  assert list(changes) == ["model_kwargs"] and resume.refused_changes(changes)
  assert changes["model_kwargs"][0]["whiten"] is True


def small_model_and_images():
  """An airbench model of widths 4-6-8 for 3 classes, whitened on 4 correlated 32x32
  images, and those images."""
  images = correlated_images(n=4, size=32)
  model = create_model("airbench", input_shape=images.shape[1:], num_classes=3,
                       widths=(4, 6, 8))
  model.init_from_data(images)
  return model, jnp.asarray(images, jnp.float32)


def test_interpret_reads_the_trained_convs_and_the_last_blocks_features():
  """Grad-CAM, the filter grid and the randomisation of research/interpret.py see the
  block convs; features then classify is the model's own forward pass."""
  from research import interpret
  model, x = small_model_and_images()
  assert [c.kernel.shape[-1] for c in model.convs] == [4, 4, 6, 6, 8, 8]
  assert model.features(x).shape == (4, 3, 3, 8)  # 32 -> 31 (2x2 valid) -> 15 -> 7 -> 3
  np.testing.assert_array_equal(model.classify(model.features(x)), model(x))
  graphdef, state = nnx.split(model)
  cam = interpret.grad_cam(graphdef, state, x, jnp.array([0, 1, 2, 0]))
  assert cam.shape == (4, 32, 32) and bool(jnp.all(jnp.isfinite(cam)))
  assert interpret.first_layer_filters(model).shape == (3, 3, 24, 4)
  assert interpret.layer_names(model)[-1] == "head" and len(interpret.layer_names(model)) == 7


def test_the_head_max_pools_the_last_block_then_scales_a_bias_free_linear():
  """The paper's head: the global max (not mean) over the last block's grid, a linear
  layer without bias, and the logits times 1/9."""
  model, x = small_model_and_images()
  features = np.asarray(model.features(x), np.float64)
  kernel = np.asarray(model.head.kernel.get_value(), np.float64)
  assert model.head.bias is None and model.logit_scale == pytest.approx(1 / 9)
  expected = features.max(axis=(1, 2)) @ kernel / 9
  np.testing.assert_allclose(model(x), expected, rtol=1e-5, atol=1e-6)
  assert not np.allclose(features.mean(axis=(1, 2)) @ kernel / 9, expected, atol=1e-3)


@pytest.mark.parametrize("fan_in,fan_out", [(4, 6), (6, 4), (5, 5)])
def test_dirac_init_makes_a_conv_the_identity(fan_in, fan_out):
  conv = nnx.jit(lambda: nnx.Conv(fan_in, fan_out, (3, 3), padding="SAME", use_bias=False,
                                  kernel_init=airbench.dirac_init(),
                                  rngs=nnx.Rngs(params=0)))()
  x = jax.random.normal(jax.random.key(1), (2, 7, 7, fan_in))
  y = conv(x)
  n = min(fan_in, fan_out)
  np.testing.assert_array_equal(y[..., :n], x[..., :n])
  if fan_out > fan_in:   # the other filters keep the default initialisation
    assert np.abs(np.asarray(conv.kernel[...][..., n:])).min() > 0


def _fake_state(model_fn, params=None, average=None) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params or {}, batch_stats={},
                    opt_state=None, average=average, graphdef=None, tx=None,
                    model_fn=model_fn)


def _eval_logits(state, images, tta="none"):
  """The logits eval_step averaged, up to a constant (from its probabilities)."""
  cfg = StepConfig(tta=tta)
  batch = {"image": jnp.asarray(images, jnp.float32),
           "label": jnp.zeros(len(images), jnp.int32)}
  _, _, probs = eval_step(state, batch, cfg)
  return np.log(np.asarray(probs)) - np.log(np.asarray(probs))[:, 2:3]  # class 2: unseen


def _reveals_view(graphdef, params, batch_stats, images, train, dropout_key):
  """Logits one-hot at the value of pixel (1, 1): which view of the image it saw."""
  del graphdef, params, train, dropout_key
  return jax.nn.one_hot(images[:, 1, 1, 0].astype(jnp.int32), 16), batch_stats


# Pixel (i, j) of the 4x4 image holds 4i + j. What pixel (1, 1) holds in each view: the
# image 5, its mirror 6; shifted by one pixel down-right (reflect padding) 0, mirrored 1;
# shifted up-left 10, mirrored 11.
@pytest.mark.parametrize("tta,views", [
    ("none", {5: 1.0}), ("flip", {5: 0.5, 6: 0.5}),
    ("flip_translate", {5: 0.25, 6: 0.25, 0: 0.125, 1: 0.125, 10: 0.125, 11: 0.125})])
def test_test_time_augmentation_averages_exactly_its_views(tta, views):
  image = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
  expected = np.zeros(16)
  for pixel, weight in views.items():
    expected[pixel] = weight
  np.testing.assert_allclose(_eval_logits(_fake_state(_reveals_view), image, tta)[0],
                             expected, atol=1e-6)


def _logits_are_the_weight(graphdef, params, batch_stats, images, train, dropout_key):
  del graphdef, train, dropout_key
  return jnp.zeros((images.shape[0], 3)).at[:, 0].set(params["w"]), batch_stats


def test_evaluation_uses_the_averaged_weights():
  average = {"params": {"w": jnp.float32(0.25)}, "batch_stats": {}}
  state = _fake_state(_logits_are_the_weight, params={"w": jnp.float32(3.0)},
                      average=average)
  assert _eval_logits(state, np.zeros((1, 4, 4, 1)))[0, 0] == pytest.approx(0.25)
  plain = state.replace(average=None)
  assert _eval_logits(plain, np.zeros((1, 4, 4, 1)))[0, 0] == pytest.approx(3.0)


@pytest.mark.parametrize("mode", ["ema", "lookahead"])
def test_averaging_moves_the_average_every_k_steps(mode):
  state = _fake_state(None, params={"w": jnp.float32(1.0)},
                      average={"params": {"w": jnp.float32(0.0)}, "batch_stats": {}})
  # decay 0.5 * (step / 8) ** 1: at step 4 of 8, d = 0.25.
  update = lambda s, step: averaging.update(s.replace(step=jnp.int32(step)), mode, 2, 0.5,
                                            1.0, 8)
  skipped = update(state, 3)
  assert float(skipped.average["params"]["w"]) == 0.0 and float(skipped.params["w"]) == 1.0
  moved = update(state, 4)
  assert float(moved.average["params"]["w"]) == pytest.approx(0.75)
  assert float(moved.params["w"]) == (0.75 if mode == "lookahead" else 1.0)


def test_alternating_flips_flip_each_image_every_other_epoch():
  key = jax.random.key(0)
  flips = np.stack([preprocess.alternating_flips(key, 1000, jnp.int32(e)) for e in range(4)])
  assert 0.4 < flips[0].mean() < 0.6                      # random in epoch 0
  assert np.all(flips[1:] != flips[:-1])                  # then alternating
  other_seed = preprocess.alternating_flips(jax.random.key(1), 1000, jnp.int32(0))
  assert np.any(np.asarray(other_seed) != flips[0])
  images = jnp.arange(2 * 2 * 3, dtype=jnp.float32).reshape(2, 1, 3, 2)
  out = preprocess.augment(key, images, ("alternating_flip",), 0,
                           flips=jnp.array([True, False]))
  np.testing.assert_array_equal(out, jnp.stack([images[0, :, ::-1], images[1]]))


def test_reflect_crop_pads_with_the_mirror_image():
  images = jnp.arange(16, dtype=jnp.float32).reshape(1, 4, 4, 1) + 1
  crop = jax.vmap(lambda key: preprocess.random_crop(key, images, 2, "reflect"))
  crops = np.asarray(crop(jax.random.split(jax.random.key(0), 20)))
  assert crops.min() > 0                            # no zeros came in from the padding
  assert any(not np.array_equal(c, images) for c in crops)


@pytest.mark.parametrize("key,value", [("weight_averaging", "swa"), ("tta", "rotate"),
                                       ("crop_fill", "wrap"), ("lr_peak_fraction", 1.5),
                                       ("bn_bias_lr_multiplier", 0.0)])
def test_bad_recipe_values_name_the_key(key, value):
  c = recipe.get_config("smoke")
  c[key] = value
  with pytest.raises(errors.ConfigError, match=key):
    configs.validate(c)


def tiny_recipe(data_dir, **overrides):
  """The recipe with every trick on, at tiny widths, on the tiny image folder."""
  c = recipe.get_config("smoke")
  c.dataset, c.data_dir, c.data_source = "folder", str(data_dir), "local"
  c.model_kwargs.widths = (4, 4, 4)
  c.train_subset, c.test_subset, c.whitening_examples = 0, 0, 36
  c.batch_size, c.eval_batch_size, c.progress = 12, 12, False
  c.averaging_every = 4
  for key, value in overrides.items():
    c[key] = value
  return c


def _assert_trees_equal(a, b):
  a, b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(a) == len(b) > 0
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)


def test_a_lookahead_run_serves_its_average_and_resumes_exactly(tiny_folder, tmp_path):
  """6 steps, the average updated at step 4, the whitening bias frozen from step 3. The
  run keeps the whitening it computed from its training images, serves the averaged
  weights, and a run stopped after step 5 (checkpoint at step 3) resumes to the same
  weights, average and metrics, bitwise."""
  config = tiny_recipe(tiny_folder, checkpoint_every_steps=3, whiten_bias_epochs=1)
  reference, summary = loop.run_training(config, tmp_path / "reference")
  average = reference.average
  whitening = np.asarray(reference.batch_stats["whiten_kernel"])
  assert np.abs(whitening).max() > 0
  np.testing.assert_array_equal(average["batch_stats"]["whiten_kernel"], whitening)
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(average["params"]),
                                                      jax.tree.leaves(reference.params)))
  served = inference.restore(tmp_path / "reference")
  _assert_trees_equal(served.params, average["params"])
  _assert_trees_equal(served.batch_stats, average["batch_stats"])
  assert 0 <= summary["test_accuracy"] <= 1

  def stop(state):
    raise KeyboardInterrupt
  with pytest.raises(KeyboardInterrupt):
    loop.run_training(config, tmp_path / "run", loop.Hooks(at_step={5: stop}))
  resumed, _ = loop.run_training(config, tmp_path / "run")
  assert np.abs(np.asarray(reference.params["whiten_bias"][...])).max() > 0  # 3 steps' worth
  for tree in ("params", "batch_stats", "average", "opt_state"):
    _assert_trees_equal(getattr(resumed, tree), getattr(reference, tree))
  lines = lambda d: [{k: v for k, v in json.loads(line).items() if k != "examples_per_s"}
                     for line in (d / "metrics.jsonl").read_text().splitlines()]
  assert lines(tmp_path / "run") == lines(tmp_path / "reference")


def test_the_ablations_tta_rows_score_as_runs_trained_with_that_tta(tiny_folder, tmp_path):
  """Test-time augmentation changes no weight: the ablation's re-evaluation of a recipe
  run with `--config.mode=eval --config.tta=none` gives, to the bit, the test loss and
  accuracy of the same run trained from the start with tta=none."""
  from experiments import airbench_ablation
  from research import sweep as sweep_lib
  config = tiny_recipe(tiny_folder)
  assert config.tta == "flip_translate"
  sweep = sweep_lib.Sweep([sweep_lib.Point({}, name="recipe")])
  (job,) = sweep_lib.plan(sweep, config, tmp_path, 1, ["python"], "c.py", {})
  _, with_tta = loop.run_training(job.config, job.workdir)
  _, trained_without = loop.run_training(tiny_recipe(tiny_folder, tta="none"),
                                         tmp_path / "no_tta")
  (re_evaluated,) = airbench_ablation.re_evaluate([job], "none")
  for key in ("test_loss", "test_accuracy"):
    assert re_evaluated[key] == trained_without[key], key
  assert re_evaluated["test_loss"] != with_tta["test_loss"]   # the views did change
  assert json.loads((job.workdir / "config.json").read_text())["tta"] == "flip_translate"
  markdown, figures = airbench_ablation.analyse([job], tmp_path)
  assert figures == [tmp_path / "points_lost.png"] and figures[0].stat().length > 0
  assert f"| no_tta | none | 1 | {100 * trained_without['test_accuracy']:.2f} |" in markdown
  assert "| tta_flip_only | flip | 1 |" in markdown
  # The scores are kept beside the run, so the table is gathered again without checkpoints.
  shutil.rmtree(job.workdir / "checkpoints")
  assert airbench_ablation.re_evaluate([job], "none") == [re_evaluated]
  assert airbench_ablation.analyse([job], tmp_path)[0] == markdown


def test_the_ablations_paper_table_sets_the_points_lost_beside_the_papers_figures():
  """results.md's last table: the recipe's mean minus each row's, with the standard error
  of two independent means, or of the runs' differences for the TTA rows (the recipe's
  own runs re-scored); the paper's figures on their rows; rows without runs left out."""
  from experiments import airbench_ablation
  accuracies = {"recipe": [0.88, 0.87, 0.89], "no_whitening": [0.86, 0.87, 0.85],
                "no_lookahead": [0.885], "zero_padding": [],
                "no_tta": [0.86, 0.87, 0.85]}
  table = airbench_ablation.paper_table(accuracies)
  assert "| recipe | 3 | reference | 9.9 | – |" in table
  # 2 points; sqrt(0.01² / 3 + 0.01² / 3) = 0.82 points; paired: std(2, 0, 4) / sqrt(3).
  assert "| no_whitening | 3 | +2.00 ± 0.82 | 22 | – |" in table
  assert "| no_tta | 3 | +2.00 ± 1.15 | – | 0.76 |" in table
  assert "| no_lookahead | 1 | -0.50 | 10.7 | – |" in table
  assert "zero_padding" not in table
  without_recipe = airbench_ablation.paper_table({**accuracies, "recipe": []})
  assert "| no_whitening | 3 | – | 22 | – |" in without_recipe


@pytest.mark.parametrize("name,kwargs", [("airbench", {"widths": (4, 4, 4)}), ("vgg", {}),
                                         ("mnist_cnn", {"batch_norm": True}),
                                         ("mlp", {"batch_norm": True})])
def test_bn_bias_mask_selects_exactly_the_batch_norm_biases(name, kwargs):
  """bn_bias_lr_multiplier finds BatchNorm layers by name (norm*): every model's."""
  model = nnx.eval_shape(lambda: MODELS[name](input_shape=(28, 28, 1), num_classes=3,
                                               rngs=nnx.Rngs(params=0), **kwargs))
  expected = {(*path, "bias") for path, node in nnx.iter_graph(model)
              if isinstance(node, nnx.BatchNorm)}
  mask = optim._batch_norm_bias_mask(nnx.state(model, nnx.Param))
  selected = {tuple(getattr(k, "key", None) for k in path)[:-1]
              for path, leaf in jax.tree_util.tree_flatten_with_path(mask)[0] if leaf}
  assert selected == expected and expected


def test_triangular_schedule_bn_bias_multiplier_and_muon():
  c = configs.base_config()
  c.learning_rate, c.num_epochs, c.lr_schedule = 1.0, 10, "triangular"
  c.optimizer, c.bn_bias_lr_multiplier, c.muon_learning_rate = "muon", 64.0, 0.5
  tx, schedule = optim.create_optimizer(c, steps_per_epoch=10)
  # 0.2 -> 1 at step 23 -> 0.07 at step 100.
  np.testing.assert_allclose([schedule(s) for s in (0, 23, 100)], [0.2, 1.0, 0.07], rtol=1e-6)
  # A kernel gradient whose (3*3*2, 4) matrix has singular values 10, 5, 1 and 0.1.
  kernel_grad = jnp.zeros((18, 4)).at[jnp.arange(4), jnp.arange(4)].set(
      jnp.array([10.0, 5.0, 1.0, 0.1])).reshape(3, 3, 2, 4)
  params = {"conv": {"kernel": jnp.ones((3, 3, 2, 4))}, "norm": {"bias": jnp.ones(4)},
            "head": {"bias": jnp.ones(4)}}
  grads = {"conv": {"kernel": kernel_grad}, "norm": {"bias": jnp.ones(4)},
           "head": {"bias": jnp.ones(4)}}
  updates, _ = tx.update(grads, tx.init(params), params)
  # Nesterov SGD's first step on the biases: -lr * (1 + momentum) * grad, x 64 for BatchNorm's.
  np.testing.assert_allclose(updates["head"]["bias"], -0.2 * 1.9)
  np.testing.assert_allclose(updates["norm"]["bias"], -0.2 * 1.9 * 64, rtol=1e-6)
  # Muon orthogonalises the kernel's gradient matrix: its singular values come close.
  singular = np.linalg.svd(np.asarray(updates["conv"]["kernel"]).reshape(18, 4),
                           compute_uv=False)
  assert singular.max() / singular.min() < 3


def _first_updates(config, grads, steps=1):
  """The updates of `steps` calls of the config's optimiser, from all-ones parameters."""
  params = {"whiten_bias": jnp.ones(3), "norm": {"bias": jnp.ones(4)},
            "conv": {"kernel": jnp.ones((3, 3, 2, 4))}, "head": {"bias": jnp.ones(2)}}
  tx, _ = optim.create_optimizer(config, steps_per_epoch=2)
  state, updates = tx.init(params), []
  for _ in range(steps):
    update, state = tx.update(grads(params), state, params)
    updates.append(update)
  return updates


def test_decay_all_params_decays_every_parameter_as_much_per_step():
  c = configs.base_config()
  c.optimizer, c.learning_rate, c.weight_decay, c.bn_bias_lr_multiplier = "sgd", 1.0, 0.1, 4.0
  zero = lambda params: jax.tree.map(jnp.zeros_like, params)
  kernels_only, = _first_updates(c, zero)
  c.decay_all_params = True
  everything, = _first_updates(c, zero)
  np.testing.assert_allclose(kernels_only["conv"]["kernel"], -0.1)
  for name in ("whiten_bias", "norm", "head"):
    np.testing.assert_array_equal(jax.tree.leaves(kernels_only[name])[0], 0.0)
  # The BatchNorm biases' decay is 0.1 / 4, then their update is x 4: 0.1 per step too.
  for leaf in jax.tree.leaves(everything):
    np.testing.assert_allclose(leaf, -0.1, rtol=1e-6)


def test_adamw_is_optaxs_and_decays_batch_norm_biases_as_much_per_step():
  """adamw built from its parts, for the shared decay masks: optax.adamw's state and
  updates to the bit, and with decay_all_params the BatchNorm biases decay per step
  as much as the rest, not x bn_bias_lr_multiplier."""
  c = configs.base_config()
  c.optimizer, c.learning_rate, c.weight_decay, c.num_epochs = "adamw", 0.01, 0.1, 2
  params = {"conv": {"kernel": jnp.ones((3, 3, 2, 4))}, "norm": {"bias": jnp.ones(4)}}
  grads = jax.tree.map(lambda p: 0.3 * p, params)
  tx, schedule = optim.create_optimizer(c, steps_per_epoch=5)
  ref = optax.adamw(schedule, b1=c.beta1, b2=c.beta2, eps=c.eps, weight_decay=0.1,
                    mask=optim._decay_mask)
  ours, theirs = tx.init(params), ref.init(params)
  assert jax.tree.structure(ours) == jax.tree.structure(theirs)
  for _ in range(3):
    mine, ours = tx.update(grads, ours, params)
    expected, theirs = ref.update(grads, theirs, params)
    jax.tree.map(np.testing.assert_array_equal, mine, expected)
  c.decay_all_params, c.bn_bias_lr_multiplier = True, 4.0
  zero = lambda params: jax.tree.map(jnp.zeros_like, params)
  update, = _first_updates(c, zero)   # zero gradients: the update is the decay alone
  for leaf in jax.tree.leaves(update):
    np.testing.assert_allclose(leaf, -0.01 * 0.1, rtol=1e-5)   # lr x weight decay


def test_whitening_bias_is_frozen_after_its_epochs():
  c = configs.base_config()
  c.optimizer, c.learning_rate, c.whiten_bias_epochs = "sgd", 1.0, 1   # 2 steps an epoch
  updates = _first_updates(c, lambda params: jax.tree.map(jnp.ones_like, params), steps=4)
  assert [float(u["whiten_bias"][0]) for u in updates] == [-1.0, -1.0, 0.0, 0.0]
  assert all(float(u["head"]["bias"][0]) == -1.0 for u in updates)
  params = lambda name, **kw: nnx.state(nnx.eval_shape(lambda: MODELS[name](
      input_shape=(32, 32, 3), num_classes=10, rngs=nnx.Rngs(params=0), **kw)), nnx.Param)
  mask = optim._whitening_bias_mask(params("airbench", widths=(4, 4, 4)))
  selected = [jax.tree_util.keystr(path) for path, leaf
              in jax.tree_util.tree_flatten_with_path(mask)[0] if leaf]
  assert len(selected) == 1 and selected[0].startswith("['whiten_bias']"), selected
  with pytest.raises(errors.ConfigError, match="whiten_bias_epochs"):
    optim.create_optimizer(c, 2)[0].init(params("vgg"))


def test_a_frozen_whitening_bias_takes_no_gradient_and_the_rest_trains_alike():
  """Once whiten_bias_epochs freezes the whitening bias, the step takes no gradient
  through the first layer: its branch has one convolution fewer (the gradient to the
  first block's input). The weights are those of the step that computes that gradient
  for the optimiser to drop, up to float rounding (the branches compile apart), and the
  bias stops moving."""
  c = recipe.get_config("smoke")
  c.whiten_bias_epochs = 1
  derived = StepConfig.from_config(c, steps_per_epoch=2)
  assert (derived.frozen_params, derived.frozen_from_step) == (("whiten_bias",), 2)
  assert StepConfig.from_config(configs.base_config()).frozen_params == ()
  cfg = StepConfig(frozen_params=("whiten_bias",), frozen_from_step=2)   # nothing else
  model, images = small_model_and_images()
  state = create_train_state(model, optim.create_optimizer(c, steps_per_epoch=2)[0])
  batch = {"image": images, "label": jnp.arange(len(images)) % 3}
  step = functools.partial(train_step, cfg=cfg)
  reference = jax.jit(functools.partial(
      train_step, cfg=dataclasses.replace(cfg, frozen_params=())))

  cond, = [e for e in jax.make_jaxpr(step)(state, batch, jax.random.key(0)).eqns
           if e.primitive.name == "cond"]
  trained, frozen = (str(b).count("conv_general_dilated") for b in cond.params["branches"])
  assert frozen == trained - 1, (trained, frozen)
  step = jax.jit(step)

  ours, theirs, biases = state, state, []
  for i in range(4):
    ours, _ = step(ours, batch, jax.random.key(i))
    theirs, _ = reference(theirs, batch, jax.random.key(i))
    for a, b in zip(jax.tree.leaves(ours.params), jax.tree.leaves(theirs.params)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    biases.append(np.asarray(ours.params["whiten_bias"][...]))
  assert not np.array_equal(biases[0], biases[1])
  np.testing.assert_array_equal(biases[1], biases[3])


def test_smoke_variant_runs_from_the_command_line(tiny_folder, tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "experiments.airbench", "--config=experiments/airbench.py:smoke",
       f"--workdir={tmp_path / 'run'}", "--config.dataset=folder",
       f"--config.data_dir={tiny_folder}", "--config.train_subset=0",
       "--config.test_subset=0", "--config.whitening_examples=36", "--config.batch_size=12",
       "--config.eval_batch_size=12"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads((tmp_path / "run" / "summary.json").read_text())
  assert summary["model"] == "airbench" and summary["steps"] == 6


def _flat(tree: dict, prefix: str = "") -> dict:
  """{"model_kwargs": {"dirac": True}} -> {"model_kwargs.dirac": True}."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[prefix + key] = value
  return out


def test_the_ablation_turns_off_one_trick_per_point(tmp_path):
  """experiments/airbench_ablation.py plans its sweep (every override a valid key of the
  recipe) and each point differs from the recipe in exactly the keys it names; the
  recipe is the main job but for frozen BatchNorm scales, so that the point
  `bn_scales_trained` is the main job, and the whitening bias trained throughout, as
  the main job had it when the study's runs were made."""
  from experiments import airbench_ablation
  from research import sweep as sweep_lib
  sweep = airbench_ablation.get_sweep()
  base = airbench_ablation.get_config()
  before = _flat(base.to_dict())
  main_job = _flat(recipe.get_config("cpu").to_dict())
  assert {k for k, v in before.items() if main_job[k] != v} == {"model_kwargs.bn_scale",
                                                                 "whiten_bias_epochs"}
  jobs = sweep_lib.plan(sweep, base, tmp_path, sweep.seeds, ["python"], "c.py", {})
  assert len(jobs) == len(airbench_ablation.ABLATIONS) * 3
  for job in jobs:
    after = _flat(job.config.to_dict())
    changed = {k for k, v in after.items() if k != "seed" and before[k] != v}
    assert changed == set(job.point.overrides), job.point.label
