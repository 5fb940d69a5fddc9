"""Pruning, int8 quantisation and distillation (research/compression.py): the mask's
sparsity, pruned weights held at zero through training and a resume, the int8 round
trip, and Hinton's loss against a hand computation, inside the train step too."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research import checkpoint as checkpoint_lib
from research import compression
from research import configs
from research import errors
from research import losses
from research import optim
from research.models import create_model
from research.training import loop
from research.training.state import create_run_model, create_train_state
from research.training.step import StepConfig, train_step


def _params(seed=0):
  """A conv kernel, a dense kernel and two biases, with weights on different scales."""
  keys = jax.random.split(jax.random.key(seed), 4)
  return {"conv": {"kernel": jax.random.normal(keys[0], (3, 3, 4, 8)),
                   "bias": jax.random.normal(keys[1], (8,))},
          "dense": {"kernel": 5 * jax.random.normal(keys[2], (72, 10)),
                    "bias": jax.random.normal(keys[3], (10,))}}


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.8, 0.9, 0.95])
def test_global_mask_prunes_exactly_the_smallest_kernel_weights(sparsity):
  params = _params()
  pruned = compression.prune(params, sparsity)
  kernels = np.concatenate([np.ravel(params[k]["kernel"]) for k in ("conv", "dense")])
  kept = np.concatenate([np.ravel(pruned[k]["kernel"]) for k in ("conv", "dense")])
  assert np.sum(kept == 0) == round(sparsity * kernels.size)
  # One threshold over both layers: every pruned |w| is below every kept one.
  if 0 < sparsity:
    assert np.abs(kernels[kept == 0]).max() <= np.abs(kernels[kept != 0]).min()
  np.testing.assert_array_equal(kept[kept != 0], kernels[kept != 0])
  for layer in ("conv", "dense"):   # biases are never pruned
    np.testing.assert_array_equal(pruned[layer]["bias"], params[layer]["bias"])


def _optimizer(prune: bool):
  c = configs.base_config()
  c.optimizer, c.learning_rate, c.momentum, c.weight_decay = "nesterov", 0.1, 0.9, 5e-4
  c.prune_sparsity = 0.5 if prune else 0.0
  return optim.create_optimizer(c, steps_per_epoch=10)[0]


@pytest.mark.parametrize("prune", [True, False])
def test_pruned_weights_stay_zero_under_momentum_and_weight_decay(prune):
  """hold_pruned, chained last, keeps zeros at exactly zero; without it (the control)
  the same updates move them."""
  params = compression.prune(_params(), 0.5)
  zero = jax.tree.map(lambda p: np.asarray(p) == 0, params)
  tx = _optimizer(prune)
  state = tx.init(params)
  for step in range(5):
    grads = _params(seed=10 + step)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  moved = sum(int(np.sum(np.asarray(p)[z] != 0)) for p, z in
              zip(jax.tree.leaves(params), jax.tree.leaves(zero)))
  assert (moved == 0) == prune


def test_pruning_holds_through_training_and_a_checkpoint_resume(tiny_folder, tmp_path):
  """A pruned run trains (momentum, weight decay), stops, and resumes: the pruned
  weights are exactly zero in every checkpoint, the mask is the one of the first
  pruning, and the other weights did train."""
  c = configs.base_config()
  c.dataset, c.data_dir, c.data_source, c.progress = "folder", str(tiny_folder), "local", False
  c.model, c.model_kwargs.widths, c.batch_size, c.num_epochs = "mlp", (32,), 12, 2
  c.optimizer, c.learning_rate, c.weight_decay = "nesterov", 0.05, 5e-3
  c.prune_sparsity, c.final_train_eval = 0.8, False
  loop.train_and_evaluate(c, tmp_path)
  c.num_epochs = 4
  summary = loop.train_and_evaluate(c, tmp_path)   # resumes from step 6
  assert summary["resumed_from_step"] == 6
  initial = nnx.state(create_run_model(c, (16, 16, 1), 3), nnx.Param)
  expected_zero = [np.asarray(m) == 0 for m in
                   jax.tree.leaves(compression.magnitude_mask(initial, 0.8))]
  checkpoints = checkpoint_lib.Checkpoints(tmp_path / "checkpoints", read_only=True)
  saved = {step: checkpoints.read_arrays(step) for step in (6, 12)}
  checkpoints.close()
  kernels = sum(p.size for p in jax.tree.leaves(initial) if p.ndim > 1)
  assert sum(z.sum() for z in expected_zero) == round(0.8 * kernels)
  for arrays in saved.values():
    params = jax.tree.leaves(arrays["params"])
    for p, z in zip(params, expected_zero):
      np.testing.assert_array_equal(p[z], 0)
  later, earlier = (jax.tree.leaves(saved[s]["params"]) for s in (12, 6))
  assert all(np.any(a[~z] != b[~z]) for a, b, z in zip(later, earlier, expected_zero))
  assert summary["nonzero_kernel_weights"] == kernels - round(0.8 * kernels)


@pytest.mark.parametrize("shape", [(3, 3, 4, 8), (72, 10)])
def test_int8_round_trip_is_within_half_a_step_per_channel(shape):
  w = jax.random.normal(jax.random.key(1), shape) * jnp.linspace(0.01, 10, shape[-1])
  w = w.at[..., 0].set(0.0)   # an all-zero channel (e.g. pruned away) stays zero
  q, scale = compression.quantize_int8(w)
  assert q.dtype == jnp.int8 and scale.shape == (shape[-1],) and scale.dtype == jnp.float32
  error = np.abs(np.asarray(w - compression.dequantize_int8(q, scale)))
  assert np.all(error <= np.asarray(scale) / 2 * (1 + 1e-6))
  # Symmetric: each channel's largest |w| is +-127, so the scale is as fine as it can be.
  assert np.all(np.abs(np.asarray(q)).max(axis=tuple(range(len(shape) - 1)))[1:] == 127)
  np.testing.assert_array_equal(np.asarray(q)[..., 0], 0)


def test_size_report_counts_int8_kernels_and_float32_scales_and_the_rest():
  params = _params()
  sizes = compression.size_report(params, {"bn": {"mean": jnp.zeros(8)}}, "int8")
  rest = 8 + 10 + 8   # two biases and one BatchNorm statistic, float32
  assert sizes["model_bytes"] == (3 * 3 * 4 * 8 + 72 * 10) + 4 * (8 + 10) + 4 * rest
  assert compression.size_report(params, {}, "none")["model_bytes"] == 4 * (
      3 * 3 * 4 * 8 + 72 * 10 + 18)


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_distillation_loss_is_hintons_and_is_cross_entropy_at_alpha_zero():
  student = np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]], np.float32)
  teacher = np.array([[2.0, 0.5, 0.0], [1.0, 1.0, 4.0]], np.float32)
  labels = np.array([1, 2])
  hard = losses.per_example_loss("cross_entropy", student, labels)
  t, alpha = 3.0, 0.7
  p, q = _softmax(teacher / t), _softmax(student / t)
  kl = np.sum(p * (np.log(p) - np.log(q)), axis=-1)
  ce = -np.log(_softmax(student)[np.arange(2), labels])
  np.testing.assert_allclose(
      losses.distillation(student, teacher, hard, t, alpha),
      alpha * t**2 * kl + (1 - alpha) * ce, rtol=1e-5)
  np.testing.assert_allclose(losses.distillation(student, teacher, hard, t, 0.0), ce,
                             rtol=1e-6)


def test_train_step_distils_from_the_teachers_logits_on_the_same_batch():
  """The step's loss with a teacher in the state is Hinton's loss of the student's and
  the teacher's logits on that batch."""
  shape, cfg = (4, 4, 1), StepConfig(distill_temperature=2.0, distill_alpha=0.5)
  student = create_model("mlp", input_shape=shape, num_classes=3, seed=0, widths=(8,))
  teacher_model = create_model("mlp", input_shape=shape, num_classes=3, seed=1, widths=(8,))
  graphdef, params, stats = nnx.split(teacher_model, nnx.Param, nnx.BatchStat)
  teacher = compression.Teacher(params=params, batch_stats=stats, scale=jnp.ones(1),
                                shift=jnp.zeros(1), graphdef=graphdef)
  state = create_train_state(student, optax.sgd(0.1)).replace(teacher=teacher)
  images = jax.random.uniform(jax.random.key(2), (6, *shape))
  labels = jnp.array([0, 1, 2, 0, 1, 2])
  _, metrics = train_step(state, {"image": images, "label": labels}, jax.random.key(0), cfg)
  hard = losses.per_example_loss("cross_entropy", student(images), labels)
  expected = losses.distillation(student(images), teacher_model(images), hard, 2.0, 0.5)
  np.testing.assert_allclose(metrics["loss"], expected.mean(), rtol=1e-5)
  assert not np.allclose(metrics["loss"], hard.mean(), rtol=1e-3)


def test_teacher_must_be_a_finished_run_on_the_same_classes(tiny_folder, tmp_path):
  c = configs.base_config()
  c.dataset, c.data_dir, c.data_source, c.progress = "folder", str(tiny_folder), "local", False
  c.model, c.batch_size, c.num_epochs, c.final_train_eval = "mlp", 12, 1, False
  teacher = tmp_path / "teacher"
  student = c.copy_and_resolve_references()
  student.distill_from = str(teacher)
  with pytest.raises(errors.ConfigError, match="distill_from=.* does not exist"):
    loop.train_and_evaluate(student, tmp_path / "student_a")
  teacher.mkdir()   # a run that has not finished: no summary.json
  with pytest.raises(errors.ConfigError, match="holds no finished run"):
    loop.train_and_evaluate(student, tmp_path / "student_a")
  loop.train_and_evaluate(c, teacher)
  student.classes = ("a", "b")
  with pytest.raises(errors.ConfigError, match=r"the teacher was trained on classes "
                     r"\['a', 'b', 'c'\]"):
    loop.train_and_evaluate(student, tmp_path / "student_b")


def test_config_checks_of_the_compression_keys():
  for key, value, match in (("prune_sparsity", 1.0, "prune_sparsity"),
                            ("quantize", "int4", "quantize"),
                            ("quantize", "int8", "num_epochs=0"),
                            ("distill_alpha", 1.5, "distill_alpha")):
    c = configs.base_config()
    c[key] = value
    if key == "distill_alpha":
      c.distill_from = "teacher"
    with pytest.raises(errors.ConfigError, match=match):
      configs.validate(c)


def test_evaluation_only_runs_from_a_teacher_prune_and_quantise_it(tiny_folder, tmp_path):
  """num_epochs=0 with init_from evaluates the teacher's weights as they are (sparsity
  0 reproduces its test loss), pruned, or int8-quantised, without a training step."""
  c = configs.base_config()
  c.dataset, c.data_dir, c.data_source, c.progress = "folder", str(tiny_folder), "local", False
  c.model, c.batch_size, c.num_epochs = "mlp", 12, 2
  teacher = loop.train_and_evaluate(c, tmp_path / "teacher")
  c.init_from, c.num_epochs, c.final_train_eval = str(tmp_path / "teacher"), 0, False
  results = {}
  for name, key, value in (("same", "prune_sparsity", 0.0), ("pruned", "prune_sparsity", 0.9),
                           ("int8", "quantize", "int8")):
    run = c.copy_and_resolve_references()
    run[key] = value
    results[name] = loop.train_and_evaluate(run, tmp_path / name)
    assert results[name]["steps"] == 0
  assert results["same"]["test_loss"] == pytest.approx(teacher["test_loss"], rel=1e-6)
  assert results["pruned"]["nonzero_kernel_weights"] == round(
      0.1 * results["pruned"]["kernel_weights"])
  assert results["int8"]["test_loss"] != results["same"]["test_loss"]
  assert results["int8"]["test_loss"] == pytest.approx(teacher["test_loss"], rel=0.05)
  assert results["int8"]["model_bytes"] < teacher["model_bytes"] / 3
