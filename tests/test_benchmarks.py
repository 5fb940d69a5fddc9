"""The benchmarks (issue 5): smoke runs, so they cannot rot, and proof that the PyTorch
and Keras peers are the same networks as ours: equal parameter counts, equal logits with
our weights copied in, and equal losses and parameters after two train steps."""

import dataclasses
import functools
import importlib
import json
import os
import re
import subprocess
import sys

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import cifar_cnn, mnist_cnn, mnist_mlp
from research import configs, normalization, optim, preprocess
from research.models import create_model
from research.training.state import count_params, create_train_state
from research.training.step import StepConfig, train_step

from conftest import REPO


@functools.cache
def _importable(module: str) -> bool:
  """Whether the benchmarks will find this peer (they skip the ones that fail)."""
  try:
    importlib.import_module(module)
    return True
  except ImportError:
    return False


def have_torch() -> bool:
  return _importable("torch")


def have_keras() -> bool:
  return _importable("benchmarks.keras_peers")


def _peers_or_skip(module: str, library: str):
  try:
    return importlib.import_module(module)
  except ImportError as e:
    pytest.skip(f"{library} is not importable ({e}): pip install -e '.[bench]'")


@pytest.fixture(scope="module")
def torch_peers():
  return _peers_or_skip("benchmarks.torch_peers", "torch")


@pytest.fixture(scope="module")
def keras_peers():
  return _peers_or_skip("benchmarks.keras_peers", "keras (JAX backend)")


# (model name, input shape, model kwargs, experiment config)
CASES = {
    "s1": ("mlp", (28, 28, 1), {"widths": (64,)}, mnist_mlp.get_config),
    "s2": ("mnist_cnn", (28, 28, 1), {}, mnist_cnn.get_config),
    "s4": ("lenet5", (32, 32, 3), {}, lambda: cifar_cnn.get_config("lenet")),
    "vgg": ("vgg", (32, 32, 3), {"widths": (16, 32, 64), "convs_per_block": 2},
            lambda: cifar_cnn.get_config("vgg")),
}


def _ours(case: str, seed: int = 0):
  name, shape, kwargs, _ = CASES[case]
  return create_model(name, input_shape=shape, num_classes=10, seed=seed, **kwargs)


def _images(shape, n=6, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def _run(args, env=None, timeout=600):
  proc = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True,
                        text=True, timeout=timeout, env=dict(os.environ, **(env or {})))
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return proc.stdout


# --- Smoke runs.

def test_train_step_benchmark_smoke(tmp_path):
  """The command and its table: the MLP, the quickest to compile, against every installed
  peer and against this checkout as --baseline, which must be the same program, two steps
  each. The peers' equivalence for every model, the VGG included, is tested below."""
  out = tmp_path / "step.json"
  stdout = _run(["benchmarks.train_step", "--models=s1", "--batch_sizes=8", "--repeats=1",
                 "--steps=2", "--matmul_size=512", f"--baseline={REPO}", f"--json_out={out}"])
  assert "| S1 MLP" in stdout and "matmul peak" in stdout and "ours/baseline" in stdout
  result = json.loads(out.read_text())
  assert result["matmul_peak_gflops"]["jax"] > 0
  (row,) = result["results"]
  assert (row["model"], row["batch_size"]) == ("s1", 8)
  assert row["ours"]["median"] > 0 and row["flops_per_step"] > 0
  assert row["steps_per_repeat"]["ours"] == 2
  assert row["baseline"]["median"] > 0 and row["same_program_as_baseline"] is True
  assert ("torch" in row) == have_torch() and ("keras" in row) == have_keras()
  assert ("ours/torch" in stdout) == have_torch()


def test_same_program_ignores_only_names_and_source_locations():
  from benchmarks.baseline_peer import same_program
  body = '\nENTRY %main {\n  %x = f32[] add(%p, %q), metadata={op_name="NAME"}\n}'
  a = 'HloModule jit_a\n1 "/a/step.py"' + body.replace("NAME", "a")
  b = 'HloModule jit_b\n1 "/b/step.py"' + body.replace("NAME", "b")
  assert same_program(a, b)
  assert not same_program(a, b.replace("add", "multiply"))


def test_profile_step_smoke(tmp_path):
  """A trace of S4's step, summed per XLA operation: the first convolution's forward
  pass (16 images a slice, 6 filters padded to 8) must be among the rows."""
  stdout = _run(["benchmarks.profile_step", "--model=s4", "--batch_size=32", "--steps=3",
                 "--top=40", f"--trace_dir={tmp_path}"])
  assert "| f32[16,28,28,8] " in stdout and "jvp()/conv_general_dilated" in stdout
  assert list(tmp_path.glob("**/*.trace.json.gz"))


def test_profile_step_finds_the_operations_inside_a_cond():
  """The main job's step runs in one branch of a `lax.cond` (the whitening bias frozen
  or not), so the table must read the branches' instructions, not only the entry's."""
  from benchmarks import profile_step

  def step(frozen, x, w):
    conv = lambda x: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=(
        "NHWC", "HWIO", "NHWC"))
    return jax.lax.cond(frozen, conv, lambda x: 2 * conv(x), x)

  x, w = jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 4))
  hlo = jax.jit(step).lower(True, x, w).compile().as_text()
  found = profile_step.instructions(hlo)
  assert any(i.kind == "convolution" and i.shape == "f32[2,8,8,4]" and "cond" in i.source
             for i in found.values()), found


def test_scan_vs_loop_smoke():
  """The three variants run, and the printed reason holds: with autodiff's convolutions,
  XLA:CPU leaves the gradient convolutions inside the loop of several steps per call in
  an order its fast kernels do not take; with the models' own, none is. If the autodiff
  line shows 0, XLA has changed: re-measure."""
  stdout = _run(["benchmarks.scan_vs_loop", "--batch_size=8", "--steps_per_call=2",
                 "--steps=2", "--repeats=1"])
  counts = dict(re.findall(r"^  (\w[\w ,]+?) +[\d,]+ images/s .* order: (\d+)", stdout,
                           re.M))
  assert counts == {"python loop": "0", "fused steps": "0",
                    "fused, autodiff convs": counts.get("fused, autodiff convs")}, stdout
  assert int(counts["fused, autodiff convs"]) > 0, stdout


def test_scan_conv_grads_smoke():
  """Autodiff's gradient convolutions stay out of order inside `lax.scan`; nhwc_conv's
  do not, and its gradients equal autodiff's bitwise."""
  stdout = _run(["benchmarks.scan_conv_grads", "--batch_size=4", "--iterations=2",
                 "--repeats=1"])
  rows = dict(re.findall(r"^  (\w+ +\S+) .*order: (\[.*\])$", stdout, re.M))
  assert rows["autodiff        lax.scan"] != "[]", stdout
  assert rows["nhwc_conv       lax.scan"] == "[]", stdout
  assert rows["nhwc_conv       plain"] == "[]", stdout
  assert "largest difference between the two gradients: 0\n" in stdout, stdout


def test_end_to_end_benchmark_smoke(tmp_path, data_dir):
  out = tmp_path / "e2e.json"
  stdout = _run(["benchmarks.end_to_end", "--recipes=s4", "--epochs=1", "--repeats=1",
                 "--train_subset=256", "--test_subset=128", f"--json_out={out}"],
                env={"RESEARCH_DATA_DIR": str(data_dir)})
  assert "| S4 LeNet-5" in stdout
  rows = json.loads(out.read_text())["results"]
  frameworks = {r["framework"] for r in rows}
  assert "ours" in frameworks
  assert ("torch" in frameworks) == have_torch()
  assert ("keras" in frameworks) == have_keras()
  for r in rows:
    assert r["train_images"] == 256 and r["test_images"] == 128 and r["epochs"] == 1
    assert 0.0 <= r["test_accuracy"] <= 1.0 and r["wall_time_s"] > 0
    assert r["wall_times_s"] == [r["wall_time_s"]]


ACCELERATOR_PARTS = ["matmul_peak", "main_job", "bfloat16", "steps_per_call",
                     "batch_sweep", "full_variant", "full_variant_torch"]


def test_accelerator_smoke(tmp_path, data_dir):
  """The lent machine's script at --smoke size: every part runs and records numbers.
  The bfloat16 part may be skipped only while the config has no compute_dtype key."""
  out = tmp_path / "accelerator.json"
  stdout = _run(["benchmarks.accelerator", "--smoke", f"--out={out}"],
                env={"RESEARCH_DATA_DIR": str(data_dir)})
  result = json.loads(out.read_text())
  assert result["device"]["platform"] == "cpu" and result["device"]["count"] >= 1
  parts = result["parts"]
  assert list(parts) == ACCELERATOR_PARTS
  for name in ACCELERATOR_PARTS:
    assert f"| {name} " in stdout
  if "compute_dtype" in configs.base_config():
    _check_rates(parts["bfloat16"], ["float32", "bfloat16"], "bfloat16_over_float32")
  else:
    assert parts["bfloat16"]["status"] == "skipped", parts["bfloat16"]
    assert "compute_dtype" in parts["bfloat16"]["note"]
  peak = parts["matmul_peak"]
  assert peak["status"] == "ok" and peak["float32_gflops"] > 0 < peak["bfloat16_gflops"]
  for name in ("main_job", "full_variant"):
    run = parts[name]
    assert run["status"] == "ok", run
    assert run["train_images"] == cifar_cnn.get_config("smoke").train_subset
    assert run["epochs"] == 1 == run["epochs_done"]
    assert 0 < run["test_accuracy"] == run["last_test_accuracy"] <= 1
    assert run["wall_time_s"] > run["train_time_s"] > 0 and run["examples_per_s"] > 0
  theirs = parts["full_variant_torch"]
  if have_torch():
    assert theirs["status"] == "ok" and theirs["device"] == "cpu", theirs
    assert theirs["train_images"] == parts["full_variant"]["train_images"]
    assert 0 <= theirs["test_accuracy"] <= 1 and theirs["wall_time_s"] > 0
    assert "The full recipe: ours " in stdout
  else:
    assert theirs["status"] == "skipped" and "PyTorch" in theirs["note"]
  _check_rates(parts["steps_per_call"], ["1", "16"], "fused_over_one")
  sweep = parts["batch_sweep"]
  _check_rates(sweep, ["8", "32"])
  assert sweep["flops_per_image"] > 0 and sweep["left_out_for_time"] == []


def _check_rates(record: dict, candidates: list[str], ratio: str = "") -> None:
  assert record["status"] == "ok", record
  assert list(record["images_per_s"]) == candidates
  for rate in record["images_per_s"].values():
    assert rate["median"] > 0 and rate["steps_per_repeat"] >= 2
  assert not ratio or record[ratio] > 0


def test_accelerator_stops_a_run_when_its_budget_runs_out(data_dir, monkeypatch):
  """Past the deadline, a run stops after its next epoch's evaluation and keeps what it
  measured."""
  from benchmarks import accelerator_parts as parts
  monkeypatch.setenv("RESEARCH_DATA_DIR", str(data_dir))
  config = parts.run_config("lenet", parts.SMOKE)   # batch 32: 16 steps an epoch
  config.num_epochs = 3
  record = parts.train_run(config, deadline=0.0)
  assert record["status"] == "stopped", record
  assert record["note"].startswith("stopped after step 17 of 48")
  assert record["epochs_done"] == 1.0 and 0 < record["last_test_accuracy"] <= 1
  assert "test_accuracy" not in record


def test_markdown_table_and_ratio():
  from benchmarks import common
  table = common.markdown_table(["a", "b"], [["x", "1"], ["yy", "22"]])
  assert table.splitlines()[1] == "|----|---:|"
  assert common.ratio(2.0, 1.0) == 2.0 and common.ratio(1.0, None) is None
  times = common.interleaved({"p": lambda: 0.5, "q": lambda: 0.25}, repeats=3)
  assert common.summary(times["q"], 10)["median"] == 40.0


# --- The peers are the same networks.

@pytest.mark.parametrize("case", list(CASES))
def test_torch_peer_has_our_parameter_count(case, torch_peers):
  name, shape, kwargs, _ = CASES[case]
  ours = _ours(case)
  n_ours = sum(x.size for x in jax.tree.leaves(nnx.state(ours, nnx.Param)))
  assert torch_peers.count_params(torch_peers.create_peer(name, shape, 10, **kwargs)) == n_ours


@pytest.mark.parametrize("case", list(CASES))
def test_torch_peer_with_our_weights_gives_our_logits(case, torch_peers):
  """Weights copied over (HWIO -> OIHW kernels, (in, out) -> (out, in) dense, and the
  first dense layer's rows permuted from flax's (H, W, C) flatten to torch's (C, H, W)):
  if any layer differed in shape, order or padding, the logits would not match."""
  import torch
  name, shape, kwargs, get_config = CASES[case]
  ours = _ours(case, seed=3)
  peer = torch_peers.create_peer(name, shape, 10, **kwargs)
  torch_peers.copy_weights(ours, peer)
  images = _images(shape)
  mean, std = normalization.mean_std(get_config(), images)
  x = preprocess.normalize(images, mean, std)   # what our train step feeds the model
  peer.eval()
  with torch.no_grad():
    theirs = peer(torch_peers.normalize(torch_peers.to_nchw(images), mean, std)).numpy()
  np.testing.assert_allclose(theirs, np.asarray(ours(x, train=False)), atol=1e-4, rtol=1e-4)
  if case == "vgg":  # training mode: BatchNorm with batch statistics in both
    peer.train()
    with torch.no_grad():
      theirs = peer(torch_peers.normalize(torch_peers.to_nchw(images), mean, std)).numpy()
    np.testing.assert_allclose(theirs, np.asarray(ours(x, train=True)), atol=1e-4,
                               rtol=1e-4)


@pytest.mark.parametrize("case", ["s2", "s4", "vgg"])
def test_torch_train_step_does_our_update(case, torch_peers):
  """From the same weights on the same batches, two steps of the torch peer's train step
  give our losses and our parameters: the same loss, gradients and optimiser (Adam for
  S2; SGD momentum for S4; Nesterov with weight decay on kernels and label smoothing for
  the VGG, at a constant learning rate).

  The VGG's float32 gradients of the first two blocks differ from float64 by up to ~0.5%
  in ours (about 4e-6 in torch; in float64 ours matches torch to 1e-14, so it is rounding,
  not a different network), so its parameters are compared relative to the update."""
  import torch
  name, shape, kwargs, get_config = CASES[case]
  config = get_config()
  config = normalization.resolved(config, *normalization.mean_std(config, _images(shape)))
  config.lr_schedule = "constant"
  config.learning_rate = min(config.learning_rate, 1e-3)  # VGG: 0.2 on noise is chaotic
  if config.weight_decay:   # large enough that decaying biases or BatchNorm would show
    config.weight_decay = 0.5
  ours = _ours(case, seed=1)
  peer = torch_peers.create_peer(name, shape, 10, **kwargs)
  torch_peers.copy_weights(ours, peer)
  initial = {k: v.detach().clone() for k, v in peer.named_parameters()}
  step = torch_peers.make_train_step(
      peer, torch_peers.create_optimizer(config, peer), tuple(config.normalize_mean),
      tuple(config.normalize_std), float(config.label_smoothing))
  tx, _ = optim.create_optimizer(config, steps_per_epoch=10)
  state = create_train_state(ours, tx)
  cfg = dataclasses.replace(StepConfig.from_config(config), augment=())
  ours_step = jax.jit(functools.partial(train_step, cfg=cfg))
  for i in range(2):
    images = _images(shape, n=8, seed=10 + i)
    labels = np.random.default_rng(i).integers(0, 10, 8).astype(np.int32)
    state, metrics = ours_step(state, {"image": images, "label": labels}, jax.random.key(0))
    loss = step(torch_peers.to_nchw(images), torch.from_numpy(labels.astype(np.int64)))
    np.testing.assert_allclose(float(loss), float(metrics["loss"]), rtol=1e-5, atol=1e-5)
  expected = torch_peers.create_peer(name, shape, 10, **kwargs)
  torch_peers.copy_weights(nnx.merge(state.graphdef, state.params, state.batch_stats),
                           expected)
  relative = 0.02 if case == "vgg" else 0.0
  for (key, got), want in zip(peer.named_parameters(), expected.parameters()):
    got, want = got.detach().numpy(), want.detach().numpy()
    update = np.abs(want - initial[key].numpy()).max()
    assert update > 0, key
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=max(2e-5, relative * update),
                               err_msg=key)


@pytest.mark.parametrize("case", list(CASES))
def test_keras_peer_matches_ours(case, keras_peers):
  name, shape, kwargs, _ = CASES[case]
  ours = _ours(case, seed=2)
  peer = keras_peers.create_peer(name, shape, 10, **kwargs)
  assert sum(int(np.prod(w.shape)) for w in peer.trainable_weights) == count_params(
      create_train_state(ours, optim.create_optimizer(configs.base_config(), 1)[0]))
  keras_peers.copy_weights(ours, peer)
  x = np.random.default_rng(0).normal(size=(4, *shape)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(peer(x, training=False)),
                             np.asarray(ours(x, train=False)), atol=1e-4, rtol=1e-4)


# --- The PyTorch airbench (benchmarks/torch_airbench.py) is our recipe's network.

@pytest.fixture(scope="module")
def torch_airbench():
  return _peers_or_skip("benchmarks.torch_airbench", "torch")


@pytest.mark.parametrize("bn_scale", [False, True])
def test_torch_airbench_is_our_network(torch_airbench, bn_scale):
  """The same trained parameter count, and our logits from our weights and BatchNorm
  statistics copied in (set at random first, so that a swapped or dropped one shows), in
  inference mode and with batch statistics; with the recipe's frozen BatchNorm scales
  and with the main job's trained ones."""
  import torch
  from experiments import airbench as recipe
  # Equal widths: XLA:CPU compiles the initialiser of unequal ones (8, 12, 16) 10x slower.
  kwargs = dict(recipe.get_config("smoke").model_kwargs, widths=(16, 16, 16),
                bn_scale=bn_scale)
  rng = np.random.default_rng(0)
  images = rng.normal(size=(6, 32, 32, 3)).astype(np.float32)
  ours = create_model("airbench", input_shape=(32, 32, 3), num_classes=10, seed=2, **kwargs)
  ours.init_from_data(images)
  ours.whiten_bias[...] = rng.normal(size=ours.whiten_bias.shape).astype(np.float32)
  for block in ours.blocks:
    for norm in (block.norm1, block.norm2):
      for stat in (norm.bias, norm.mean) + ((norm.scale,) if bn_scale else ()):
        stat[...] = rng.normal(size=stat.shape).astype(np.float32)
      norm.var[...] = rng.uniform(0.5, 2, size=norm.var.shape).astype(np.float32)
  peer = torch_airbench.Airbench((32, 32, 3), 10, **kwargs)
  from benchmarks import torch_peers
  assert torch_peers.count_params(peer) == sum(
      x.size for x in jax.tree.leaves(nnx.state(ours, nnx.Param)))
  torch_airbench.copy_weights(ours, peer)
  x = torch.from_numpy(images).permute(0, 3, 1, 2)
  for train in (False, True):
    peer.train(train)
    with torch.no_grad():
      theirs = peer(x).numpy()
    np.testing.assert_allclose(theirs, np.asarray(ours(images, train=train)),
                               atol=1e-4, rtol=1e-4)


def test_torch_airbench_trains_the_recipe(torch_airbench, tiny_folder):
  """The whole PyTorch program on a tiny folder: it trains, averages and evaluates."""
  from research.training import preflight
  from test_airbench import tiny_recipe
  config, dataset = preflight.load_for_run(tiny_recipe(tiny_folder))
  result = torch_airbench.train_recipe(config, dataset)
  assert result["steps"] == config.num_epochs * (36 // config.batch_size)
  assert 0 <= result["test_accuracy"] <= 1 and result["wall_time_s"] > 0
