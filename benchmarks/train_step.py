"""Train-step throughput: the project's jitted step against PyTorch and Keras 3 peers.

    python -m benchmarks.train_step [--models=s1,s2,s4,vgg] [--batch_sizes=32,128,512]
        [--repeats=5] [--steps=N] [--peers=torch,keras] [--torch_threads=N]
        [--json_out=PATH] [--baseline=PATH]

For each model and batch size it builds, from the experiment's own config (model,
optimiser, normalisation, label smoothing, weight decay):
- ours:  `research.training.jitted.make_train_fn`, the step the train loop runs (the
         dataset on the device, the batch gathered from an on-device permutation, state
         donated), called in a Python loop as the loop calls it;
- torch: the same architecture in PyTorch eager (benchmarks/torch_peers.py), the batch
         gathered from in-memory NCHW tensors by the same permutation;
- keras: the same architecture in Keras 3 on the JAX backend (benchmarks/keras_peers.py),
         timed as `model.fit` over float32 arrays (how a Keras user trains);
- baseline: with --baseline=PATH, our step as another checkout builds it
         (benchmarks/baseline_peer.py), for the before and after of a change.
Each candidate is warmed up (compiled) untimed, then run in interleaved repeats of
`--steps` steps (by default chosen so that a repeat takes about --target_s seconds);
the table shows median images/s and the ratio ours/theirs (> 1: ours is faster).

GFLOP/s: FLOPs per step from XLA's cost analysis of our compiled step (the peers do the
same arithmetic), divided by the median step time, as a fraction of a measured 2048x2048
float32 matmul under jit (the practical compute peak of the machine).

Data is synthetic uint8 pixels of the dataset's shape (throughput does not depend on
the values). Not timed: data augmentation (VGG's recipe has crop+flip; left out for all
frameworks so that they do the same work; it was measured at no visible cost) and
learning-rate schedules (constant in the peers).
"""

import os
import sys
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np

from benchmarks import baseline_peer
from benchmarks import common
from benchmarks import workloads
from benchmarks.workloads import NUM_CLASSES, WORKLOADS, synthetic_data
from research import configs
from research import normalization
from research.training.state import count_params

FLAGS = flags.FLAGS
flags.DEFINE_list("models", ["s1", "s2", "s4", "vgg"],
                  "Models: s1, s2, s4, vgg, airbench (the main job; a torch peer only).")
flags.DEFINE_list("batch_sizes", ["32", "128", "512"], "Batch sizes.")
flags.DEFINE_integer("repeats", 5, "Timed repeats of each candidate (interleaved).")
flags.DEFINE_integer("steps", 0, "Steps per repeat; 0 = calibrated to --target_s.")
flags.DEFINE_float("target_s", 0.7, "Seconds per repeat when --steps=0.")
flags.DEFINE_list("peers", ["torch", "keras"],
                  "Peers to compare with; by default those that are installed.")
flags.DEFINE_integer("matmul_size", 2048, "Side of the square matmul that measures the peak.")
flags.DEFINE_integer("torch_threads", 0, "torch.set_num_threads (0 = torch's default).")
flags.DEFINE_string("json_out", "", "Also write the results as JSON to this path.")
flags.DEFINE_string("baseline", "", "A checkout of another revision of this project: its "
                    "step becomes the peer 'baseline' (benchmarks/baseline_peer.py).")


def ours(config, shape, batch, data):
  """Returns (run(steps) -> seconds, FLOPs per step, parameter count, optimised HLO)."""
  step = workloads.build_ours(config, shape, batch, data)
  flops = common.compiled_flops(step.one_step_fn, step.state, *step.arrays, 0, 1)
  hlo = step.step_fn.lower(step.state, *step.arrays, 0, step.steps_per_call).compile()
  return common.timed(step.run), flops, count_params(step.state), hlo.as_text()


def torch_peer(config, shape, batch, data):
  import torch
  from benchmarks import torch_peers
  images_np, labels_np, perm_np = data
  torch.manual_seed(0)
  model = torch_peers.create_peer(config.model, shape, NUM_CLASSES,
                                  **configs.model_kwargs(config))
  params = torch_peers.count_params(model)
  if config.whiten_bias_epochs:   # frozen: PyTorch then skips its gradient
    model.whiten.bias.requires_grad_(False)
  step = torch_peers.make_train_step(
      model, torch_peers.create_optimizer(config, model), tuple(config.normalize_mean),
      tuple(config.normalize_std), float(config.label_smoothing))
  x = torch_peers.to_nchw(images_np)
  y = torch.from_numpy(labels_np.astype(np.int64))
  perm = torch.from_numpy(perm_np.astype(np.int64))
  num_batches = len(labels_np) // batch

  def loop(steps):
    for i in range(steps):
      j = i % num_batches
      idx = perm[j * batch:(j + 1) * batch]
      step(x[idx], y[idx])

  return common.timed(loop), params


def keras_peer(config, shape, batch, data):
  from benchmarks import keras_peers
  images_np, labels_np, _ = data
  model = keras_peers.compile_peer(config, keras_peers.create_peer(
      config.model, shape, NUM_CLASSES, **configs.model_kwargs(config)))
  pool_x = keras_peers.normalize(images_np, tuple(config.normalize_mean),
                                 tuple(config.normalize_std))
  cache = {}

  def arrays(steps):
    if steps not in cache:
      cache.clear()
      idx = np.arange(steps * batch) % len(labels_np)
      cache[steps] = (pool_x[idx], labels_np[idx])
    return cache[steps]

  def loop(steps):
    x, y = arrays(steps)
    model.fit(x, y, batch_size=batch, epochs=1, shuffle=True, verbose=0)

  params = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
  # fit() holds its arrays on the host; keep one repeat's copy under ~256 MB.
  max_steps = max(2, (256 << 20) // (batch * pool_x[0].nbytes))
  return common.timed(loop), params, max_steps


def available_peers(requested: list[str], explicit: bool) -> list[str]:
  peers = []
  for name in requested:
    module = {"torch": "torch", "keras": "benchmarks.keras_peers"}.get(name)
    if module is None:
      raise app.UsageError(f"unknown peer {name!r}; choose torch, keras")
    try:
      __import__(module)
      peers.append(name)
    except ImportError as e:
      if explicit:
        raise app.UsageError(f"--peers={name} but it cannot be imported ({e}); "
                             "install the bench extra: pip install -e '.[bench]'") from e
      print(f"note: {name} is not installed ({e}); skipping it. "
            "pip install -e '.[bench]' adds it.")
  return peers


def benchmark(key: str, batch: int, peers: list[str]) -> dict:
  work = WORKLOADS[key]
  peers = [p for p in peers if p in work.peers]
  config = work.get_config()
  data = synthetic_data(work.input_shape, batch)
  # The peers normalise as ours: with the values measured on this data for 'auto'.
  config = normalization.resolved(config, *normalization.mean_std(config, data[0]))
  runs, max_steps = {}, {}
  runs["ours"], flops, n_ours, hlo = ours(config, work.input_shape, batch, data)
  params = {"ours": n_ours}
  baseline = None
  if FLAGS.baseline:
    baseline = baseline_peer.BaselineStep(FLAGS.baseline, key, batch)
    runs["baseline"], params["baseline"] = baseline.run, baseline.params
  if "torch" in peers:
    runs["torch"], params["torch"] = torch_peer(config, work.input_shape, batch, data)
  if "keras" in peers:
    runs["keras"], params["keras"], max_steps["keras"] = keras_peer(
        config, work.input_shape, batch, data)
  for name, n in params.items():
    if n != n_ours:
      raise RuntimeError(f"{work.label}: the {name} peer has {n:,} parameters, ours "
                         f"{n_ours:,}: not the same architecture")
  steps, times = common.measure(runs, FLAGS.repeats, FLAGS.target_s, FLAGS.steps,
                                max_steps)
  result = {"model": key, "label": work.label, "batch_size": batch, "params": n_ours,
            "steps_per_repeat": steps, "flops_per_step": flops}
  if baseline:
    result["same_program_as_baseline"] = baseline_peer.same_program(hlo, baseline.hlo())
    baseline.close()
  for name in runs:
    result[name] = common.summary(times[name], steps[name] * batch)
  return result


def table(results: list[dict], peers: list[str], peak: float) -> str:
  headers = ["model", "batch", "ours img/s"]
  headers += [f"{p} img/s" for p in peers] + [f"ours/{p}" for p in peers]
  headers += ["MFLOP/img", "ours GFLOP/s", "ours % peak"] + [f"{p} % peak" for p in peers]
  if "baseline" in peers:
    headers.append("same program as baseline")
  rows = []
  for r in results:
    rate = {name: r[name]["median"] for name in ["ours", *peers] if name in r}
    per_image = r["flops_per_step"] / r["batch_size"] if r["flops_per_step"] else None
    gflops = {k: v * per_image / 1e9 if per_image else None for k, v in rate.items()}
    row = [r["label"], str(r["batch_size"]), common.fmt(rate["ours"])]
    row += [common.fmt(rate.get(p)) for p in peers]
    row += [common.fmt(common.ratio(rate["ours"], rate.get(p)), ".2f") for p in peers]
    row += [common.fmt(per_image / 1e6 if per_image else None, ".2f"),
            common.fmt(gflops["ours"], ".1f"),
            common.fmt(100 * gflops["ours"] / peak if gflops["ours"] else None, ".1f")]
    row += [common.fmt(100 * gflops[p] / peak if gflops.get(p) else None, ".1f")
            for p in peers]
    if "baseline" in peers:
      row.append("yes" if r["same_program_as_baseline"] else "no")
    rows.append(row)
  return common.markdown_table(headers, rows)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax and jax log every save at INFO
  unknown = [m for m in FLAGS.models if m not in WORKLOADS]
  if unknown:
    raise app.UsageError(f"unknown model(s) {unknown}; choose from {sorted(WORKLOADS)}")
  batch_sizes = [int(b) for b in FLAGS.batch_sizes]
  peers = available_peers(FLAGS.peers, explicit=FLAGS["peers"].present)
  peers += ["baseline"] if FLAGS.baseline else []
  if "torch" in peers and FLAGS.torch_threads:
    import torch
    torch.set_num_threads(FLAGS.torch_threads)
  machine = common.machine_description()
  print(common.describe(machine))
  n = FLAGS.matmul_size
  peak = common.matmul_peak_jax(n)
  torch_peak = common.matmul_peak_torch(n) if "torch" in peers else None
  print(f"matmul peak ({n}x{n} f32, best of 5): jax {peak:.1f} GFLOP/s"
        + (f", torch {torch_peak:.1f} GFLOP/s" if torch_peak else ""))
  results = []
  for key in FLAGS.models:
    for batch in batch_sizes:
      start = time.perf_counter()
      results.append(benchmark(key, batch, peers))
      print(f"  {WORKLOADS[key].label}, batch {batch}: done in "
            f"{time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
  print()
  print(f"Train-step throughput, images/s (median of {FLAGS.repeats} interleaved "
        "repeats); ratio > 1 means ours is faster; % peak of the jax matmul peak, with "
        "FLOPs from XLA's count of our step:")
  print()
  print(table(results, peers, peak))
  end_load = machine_load()
  if end_load is not None:
    print(f"\n1-min load average at the end: {end_load:.2f}")
  if FLAGS.json_out:
    common.write_json(FLAGS.json_out, {
        "benchmark": "train_step", "machine": machine, "end_load_average": end_load,
        "matmul_peak_gflops": {"jax": peak, "torch": torch_peak},
        "repeats": FLAGS.repeats, "results": results})
    print(f"wrote {FLAGS.json_out}")


def machine_load():
  return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


if __name__ == "__main__":
  app.run(main)
