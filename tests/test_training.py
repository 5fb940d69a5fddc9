"""The train loop: determinism, one compilation per run, sharding, optimisers, schedules."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research import configs, optim
from research.training import jitted, loop
from research.training.step import train_step

from conftest import REPO


def tiny_config(data_dir, **overrides):
  c = configs.base_config()
  c.dataset, c.data_dir, c.data_source = "folder", str(data_dir), "local"
  c.model, c.batch_size, c.num_epochs = "mnist_cnn", 12, 2
  c.log_every_steps, c.eval_batch_size, c.progress = 1, 8, False
  c.augment = "crop,flip"
  for key, value in overrides.items():
    c[key] = value
  return c


def params_of(state):
  return [np.asarray(x) for x in jax.tree.leaves(state.params)]


def test_same_seed_gives_bitwise_identical_params(tiny_folder, tmp_path):
  a, _ = loop.run_training(tiny_config(tiny_folder), tmp_path / "a")
  b, _ = loop.run_training(tiny_config(tiny_folder), tmp_path / "b")
  c, _ = loop.run_training(tiny_config(tiny_folder, seed=1), tmp_path / "c")
  for x, y in zip(params_of(a), params_of(b)):
    np.testing.assert_array_equal(x, y)
  assert any(not np.array_equal(x, z) for x, z in zip(params_of(a), params_of(c)))


@pytest.mark.parametrize("steps_per_call", [1, 2])
def test_train_step_compiles_once_per_run(tiny_folder, tmp_path, monkeypatch,
                                          steps_per_call):
  """Also with several steps per call, where calls of 1 and 2 steps alternate (epochs of
  3 steps): the step count is an argument of one program."""
  traces = []

  def counting_step(*args):
    traces.append(1)  # runs once per trace, not per step
    return train_step(*args)

  monkeypatch.setattr(jitted, "train_step", counting_step)
  c = tiny_config(tiny_folder, num_epochs=3, log_every_steps=10,
                  steps_per_call=steps_per_call)
  _, summary = loop.run_training(c, tmp_path / "run")
  assert summary["steps"] == 9
  assert len(traces) == 1


def test_steps_per_call_gives_bitwise_the_same_run(data_dir, tmp_path):
  """The S2 CNN on real MNIST with micro-batches: 1, 4 and 32 steps per call (calls cut
  short at logs and epoch ends) give bitwise the same parameters and train metrics."""
  runs = {}
  for k in (1, 4, 32):
    c = configs.base_config()
    c.dataset, c.data_dir, c.model = "mnist", str(data_dir), "mnist_cnn"
    c.train_subset, c.test_subset, c.batch_size, c.micro_batch_size = 480, 100, 32, 16
    c.num_epochs, c.log_every_steps, c.progress, c.steps_per_call = 2, 7, False, k
    state, _ = loop.run_training(c, tmp_path / str(k))
    lines = (tmp_path / str(k) / "metrics.jsonl").read_text().splitlines()
    records = [{key: v for key, v in json.loads(l).items() if key != "examples_per_s"}
               for l in lines]
    runs[k] = params_of(state), records
  for k in (4, 32):
    for x, y in zip(runs[k][0], runs[1][0]):
      np.testing.assert_array_equal(x, y)
    assert runs[k][1] == runs[1][1]
  assert [r["step"] for r in runs[1][1] if r["split"] == "train"] == [7, 14, 15, 21, 28, 30]


def test_outputs_in_workdir(tiny_folder, tmp_path):
  workdir = tmp_path / "run"
  _, summary = loop.run_training(tiny_config(tiny_folder, validation_size=0.25), workdir)
  saved = json.loads((workdir / "summary.json").read_text())
  for key in ("test_accuracy", "test_loss", "train_accuracy", "train_loss", "steps",
              "epochs", "wall_time_s", "examples_per_s", "devices", "versions",
              "git_commit", "validation_accuracy", "test_macro_f1",
              "test_confusion_matrix"):
    assert key in saved, key
  assert np.sum(saved["test_confusion_matrix"]) == 12
  assert json.loads((workdir / "config.json").read_text())["model"] == "mnist_cnn"
  assert (workdir / "curves.png").read_bytes()[:4] == b"\x89PNG"
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  splits = {r["split"] for r in records}
  assert splits == {"train", "test", "validation"}
  train = [r for r in records if r["split"] == "train"]
  assert {"step", "epoch", "loss", "accuracy", "lr", "examples_per_s"} <= set(train[0])
  assert [r["step"] for r in train] == sorted(r["step"] for r in train)


def test_logged_throughput_covers_the_whole_window(tiny_folder, tmp_path):
  """Steps run asynchronously: a window timed before its metrics are fetched measures
  only the dispatch and reports an absurd throughput. The windows' times must add up to
  the training time."""
  c = tiny_config(tiny_folder, model="mlp", num_epochs=4, log_every_steps=2,
                  augment="none")
  c.model_kwargs.widths = (2048, 2048)   # enough compute per step to dwarf the dispatch
  _, summary = loop.run_training(c, tmp_path / "run")
  records = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  train = [r for r in records if r["split"] == "train"]
  steps = np.diff([0] + [r["step"] for r in train])
  seconds = [n * c.batch_size / r["examples_per_s"] for n, r in zip(steps, train)]
  # The first window holds the compilation, which is synchronous; compare the rest.
  assert sum(seconds[1:]) == pytest.approx(summary["train_time_s"] - seconds[0], rel=0.3)


def test_existing_results_are_never_overwritten(tiny_folder, tmp_path):
  workdir = tmp_path / "run"
  loop.run_training(tiny_config(tiny_folder, num_epochs=1), workdir)
  before = (workdir / "summary.json").read_bytes()
  # A finished run with checkpoints is reported, not retrained (tests/test_checkpoint.py).
  _, summary = loop.run_training(tiny_config(tiny_folder, num_epochs=1), workdir)
  assert summary == json.loads(before)
  # Results without checkpoints to resume from are refused.
  (workdir / "checkpoints").rename(tmp_path / "moved")
  with pytest.raises(Exception, match="already holds results"):
    loop.run_training(tiny_config(tiny_folder, num_epochs=1), workdir)
  assert (workdir / "summary.json").read_bytes() == before


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_every_optimizer_learns(name):
  """Each optimiser, as built from the config, fits a separable softmax regression."""
  c = configs.base_config()
  c.optimizer, c.weight_decay = name, 1e-4
  c.learning_rate = {"sgd": 0.5, "momentum": 0.1, "nesterov": 0.1, "adadelta": 10.0}.get(name, 0.05)
  tx, _ = optim.create_optimizer(c, steps_per_epoch=10)
  x = jax.random.normal(jax.random.key(0), (256, 8))
  labels = jnp.argmax(x[:, :3], axis=1)
  params = {"w": jnp.zeros((8, 3)), "b": jnp.zeros((3,))}
  loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(
      x @ p["w"] + p["b"], labels).mean()
  opt_state = tx.init(params)
  for _ in range(100):
    updates, opt_state = tx.update(jax.grad(loss)(params), opt_state, params)
    params = optax.apply_updates(params, updates)
  assert float(loss(params)) < 0.5 * np.log(3), (name, float(loss(params)))


def test_schedules():
  c = configs.base_config()
  c.learning_rate, c.num_epochs, c.warmup_epochs = 1.0, 10, 2
  values = {}
  for name in optim.SCHEDULES:
    c.lr_schedule = name
    c.lr_step_epochs, c.lr_decay_factor = (5,), 0.1
    values[name] = optim.create_schedule(c, steps_per_epoch=10)
  assert float(values["constant"](99)) == 1.0
  assert float(values["step"](49)) == 1.0 and np.isclose(values["step"](50), 0.1)
  assert np.isclose(values["exponential"](20), 0.01)
  assert np.isclose(values["cosine"](50), 0.5) and np.isclose(values["cosine"](100), 0.0)
  assert np.isclose(values["warmup_cosine"](10), 0.5) and np.isclose(values["warmup_cosine"](20), 1.0)
  assert np.isclose(values["onecycle"](20), 1.0) and values["onecycle"](99) < 0.02


def test_bad_config_values_name_the_key():
  c = configs.base_config()
  c.optimizer = "adamm"
  with pytest.raises(ValueError, match="config.optimizer"):
    configs.validate(c)
  c = configs.base_config()
  c.augment = "crop,shear"
  with pytest.raises(ValueError, match="config.augment"):
    configs.validate(c)
  c = configs.base_config()
  c.cpu_convolutions = "onednn"
  with pytest.raises(ValueError, match="config.cpu_convolutions"):
    configs.validate(c)
  c = configs.base_config()
  c.async_checkpoints = "always"
  with pytest.raises(ValueError, match="config.async_checkpoints"):
    configs.validate(c)


EIGHT_VS_ONE = """
import json, sys, jax, numpy as np
from research import configs
from research.training import jitted, loop
assert jax.device_count() == 8
results = {}
for n in (8, 1):
  c = configs.base_config()
  c.dataset, c.data_dir, c.model = "mnist", sys.argv[1], "mnist_cnn"
  c.train_subset, c.test_subset, c.batch_size, c.num_epochs = 2048, 512, 64, 1
  c.num_devices, c.progress, c.eval_batch_size = n, False, 256
  c.micro_batch_size = 4   # slices of each device's rows: 2 on 8 devices, 16 on one
  state, summary = loop.run_training(c, f"{sys.argv[2]}/{n}")
  results[n] = ([np.asarray(x) for x in jax.tree.leaves(state.params)], summary)
(p8, s8), (p1, s1) = results[8], results[1]
print(json.dumps({"max_param_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(p8, p1)),
                  "loss8": s8["test_loss"], "loss1": s1["test_loss"],
                  "devices8": s8["devices"]["count"], "devices1": s1["devices"]["count"]}))
"""


def test_eight_devices_match_one_device(data_dir, tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  result = subprocess.run([sys.executable, "-c", EIGHT_VS_ONE, str(data_dir), str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  out = json.loads(result.stdout.strip().splitlines()[-1])
  assert (out["devices8"], out["devices1"]) == (8, 1)
  assert out["max_param_diff"] < 1e-4, out
  assert abs(out["loss8"] - out["loss1"]) < 1e-4, out
