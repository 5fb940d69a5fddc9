"""Attribution maps (research/interpret.py): the sanity check of Adebayo et al. (2018),
the completeness of Integrated Gradients, Grad-CAM's view of the last conv layer, and the
command line. One small CNN trained for seconds on real MNIST serves them all."""

import os
import subprocess
import sys

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO
from experiments import mnist_cnn
from research import inference
from research import interpret
from research.models import create_model
from research.training import loop


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
  """S3 (the minimal CNN) after 2 epochs on 640 MNIST images (about 80% test accuracy),
  restored as research.interpret restores a run, with 16 test images."""
  c = mnist_cnn.get_config("smoke")
  c.model, c.progress, c.validation_size = "minimal_cnn", False, 0.0
  workdir = tmp_path_factory.mktemp("minimal_cnn")
  with pytest.MonkeyPatch.context() as env:
    env.setenv("RESEARCH_DATA_DIR", str(data_dir))
    loop.train_and_evaluate(c, str(workdir))
    restored = inference.restore(workdir)
    split = interpret.sample_test_split(restored, 16)
  x = interpret.normalized(restored, split.images)
  target = jnp.asarray(np.asarray(restored(split.images)["probabilities"]).argmax(-1))
  return workdir, restored, x, target


def _saliency_map(model, x, target):
  graphdef, state = nnx.split(model)
  return interpret.pixel_map(interpret.saliency(graphdef, state, x, target))


# Measured (2026-12-03, this fixture, 32 test images, 5 randomisation keys): the rank
# correlation of |saliency| between the trained and the fully re-initialised model is
# 0.22-0.23 on average (0.14 to 0.30 per image); between two models trained from
# different seeds, 0.33: gradient maps of a model this small are noisy. A map that does
# not depend on the weights (an edge detector, the input itself) scores 1.0 here. 0.5
# leaves a margin of more than 0.25 above what randomisation gives, and fails any
# method that ignores the model.
RANDOMIZED_MAX_CORRELATION = 0.5


def test_saliency_changes_when_the_weights_are_randomised(trained):
  """Adebayo et al. (2018), model parameter randomisation: the saliency of the trained
  model and of the same model with every layer re-initialised must differ."""
  _, restored, x, target = trained
  model = interpret.model_of(restored)
  trained_map = _saliency_map(model, x, target)
  random_map = _saliency_map(interpret.randomize(model, 99, jax.random.key(0)), x, target)
  assert not np.array_equal(trained_map, random_map)
  correlation = interpret.rank_correlations(trained_map, random_map).mean()
  assert correlation < RANDOMIZED_MAX_CORRELATION
  # The check can fail: a "method" blind to the weights (here |x|, the input itself)
  # gives the same map for both models.
  blind = np.abs(np.asarray(x)).sum(-1)
  assert interpret.rank_correlations(blind, blind).mean() > RANDOMIZED_MAX_CORRELATION


def test_randomize_reinitialises_only_the_top_layers(trained):
  _, restored, _, _ = trained
  model = interpret.model_of(restored)   # minimal CNN: one conv, then the head
  top = interpret.randomize(model, 1, jax.random.key(0))
  assert np.array_equal(top.convs[0].kernel.get_value(), model.convs[0].kernel.get_value())
  assert not np.array_equal(top.head.kernel.get_value(), model.head.kernel.get_value())
  assert not np.any(top.head.bias.get_value())


def test_integrated_gradients_sum_to_the_logit_difference(trained):
  """Completeness: sum of attributions = logit(x) - logit(baseline), up to the midpoint
  rule's error. The path crosses ReLU kinks, where the integrand jumps, so the error
  falls as 1/steps (not 1/steps^2): measured (max over 32 images) 4.1% of
  |logit(x) - logit(baseline)| at 8 steps, 0.85% at 64, 0.12% at 256. The tolerance,
  1/steps (12.5% and 1.6%), is about twice the measured worst case or more."""
  _, restored, x, target = trained
  graphdef, state = nnx.split(interpret.model_of(restored))
  baseline = interpret.baseline_for("black", restored, x)
  errors = {steps: interpret.completeness_errors(graphdef, state, x, target, baseline, steps)
            for steps in (8, 64)}
  for steps, relative_errors in errors.items():
    assert np.all(relative_errors <= 1 / steps)
  assert errors[64].mean() < errors[8].mean()


def _vgg_by_hand(model, x):
  """VGG's forward pass as its docstring specifies it, layer by layer, in one function."""
  h = x
  for i, (conv, norm) in enumerate(zip(model.convs, model.norms)):
    h = jax.nn.relu(norm(conv(h), use_running_average=True))
    if (i + 1) % model.convs_per_block == 0:
      h = nnx.max_pool(h, (2, 2), strides=(2, 2))
  return model.head(jnp.mean(h, axis=(1, 2)))


def _convpool_by_hand(model, x):
  h = x
  for conv in model.convs:
    h = nnx.max_pool(jax.nn.relu(conv(h)), (2, 2), strides=(2, 2))
  h = h.reshape(h.shape[0], -1)
  for dense in model.dense:
    h = jax.nn.relu(dense(h))
  return model.head(h)


@pytest.mark.parametrize("name, by_hand, kwargs", [
    ("vgg", _vgg_by_hand, {"widths": (4, 8), "convs_per_block": 2}),
    ("mnist_cnn", _convpool_by_hand, {"width_multiplier": 0.25})])
def test_grad_cam_features_leave_the_logits_bitwise_unchanged(name, by_hand, kwargs):
  """The last conv layer's activations come from `features`, with `classify` the rest:
  the model's own forward pass is bitwise the layer-by-layer one, and the split adds no
  state (the train state splits into parameters and statistics alone)."""
  model = create_model(name, input_shape=(16, 16, 3), num_classes=5, seed=0, **kwargs)
  x = jax.random.normal(jax.random.key(1), (4, 16, 16, 3))
  graphdef, state = nnx.split(model)

  @jax.jit
  def forward(state, x):
    model = nnx.merge(graphdef, state)
    return model(x), by_hand(model, x), model.features(x)

  logits, logits_by_hand, features = forward(state, x)
  assert np.array_equal(logits, logits_by_hand)
  assert features.shape[-1] == model.convs[-1].out_features
  _, _, _, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
  assert not jax.tree.leaves(rest)
  cam = interpret.grad_cam(graphdef, state, x, jnp.argmax(logits, -1))
  assert cam.shape == (4, 16, 16) and np.all(cam >= 0) and np.any(cam > 0)


def test_a_model_without_conv_layers_gets_the_gradient_methods_only():
  model = create_model("mlp", input_shape=(8, 8, 1), num_classes=3, widths=(16,))
  graphdef, state = nnx.split(model)
  x, target = jnp.ones((2, 8, 8, 1)), jnp.array([0, 2])
  maps = interpret.explain(graphdef, state, x, target, jnp.zeros_like(x), jax.random.key(0),
                           ("saliency", "integrated_gradients"))
  assert all(m.shape == (2, 8, 8) and np.any(m > 0) for m in maps.values())
  with pytest.raises(interpret.NoConvLayers,
                     match="Grad-CAM needs a model that exposes its conv layers.*MLP does not"):
    interpret.grad_cam(graphdef, state, x, target)
  with pytest.raises(interpret.NoConvLayers, match="filter grid"):
    interpret.first_layer_filters(model)


def _cli(*args, data_dir):
  return subprocess.run([sys.executable, "-m", "research.interpret", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, RESEARCH_DATA_DIR=str(data_dir)))


def test_command_line_writes_the_maps_and_filters(trained, data_dir, tmp_path):
  workdir = trained[0]
  result = _cli(f"--workdir={workdir}", "--num_images=3", f"--out={tmp_path}",
                data_dir=data_dir)
  assert result.returncode == 0, result.stderr[-2000:]
  assert (tmp_path / "maps.png").stat().st_size > 20_000      # 3 rows of 5 panels
  assert (tmp_path / "filters.png").stat().st_size > 5_000    # 32 filters of 3x3


def test_command_line_refuses_a_workdir_without_a_run(data_dir, tmp_path):
  result = _cli(f"--workdir={tmp_path}", data_dir=data_dir)
  assert result.returncode == 2
  assert "holds no run" in result.stderr and str(tmp_path) in result.stderr
  assert not (tmp_path / "interpret").exists()
