"""Python loop over one jitted step against `lax.scan` over the steps, same work.

    python -m benchmarks.scan_vs_loop [--model=mnist_cnn] [--batch_size=64] [--steps=50]

Why the train loop is a Python loop: on XLA:CPU the scanned version was several times
slower (issue 2). This re-measures it on the machine at hand, interleaved, with repeats
and medians, and prints the ratio, so the choice can be re-made for each backend.

It also prints why, from each program's optimised HLO: the convolutions left in a
dimension order other than NHWC/HWIO -> NHWC ("b01f_01io->b01f"). XLA:CPU's library
kernels (Eigen, YNNPACK) take only that order, and its ConvCanonicalization pass, which
transposes the operands into it, visits the entry computation only (openxla/xla
xla/service/cpu/conv_canonicalization.cc). Autodiff writes a kernel gradient as a
convolution over the batch ("f01b_i01o->01bf") and an input gradient with the kernel's
channel axes swapped ("b01f_01oi->b01f"). In the loop's step both are canonicalised;
inside the while loop of `lax.scan` they stay as they are and run as XLA's generic
emitted loops. Alone, the kernel gradient of a 3x3 convolution (13x13x32 -> 64 channels)
took 2.8 to 7 ms per call at batch 64 and 313 to 319 ms as a scan iteration (2-core
Xeon, jax 0.10.2, either convolution library).
"""

import functools
import statistics
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from research import configs, sharding
from research.models import create_model
from research.training import jitted, optim
from research.training.state import create_train_state
from research.training.step import StepConfig

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "mnist_cnn", "Registered model name.")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_integer("steps", 50, "Steps per timed repeat.")
flags.DEFINE_integer("repeats", 3, "Timed repeats of each variant (interleaved).")


def main(_):
  shape = (28, 28, 1) if FLAGS.model in ("mlp", "mnist_cnn", "minimal_cnn") else (32, 32, 3)
  config = configs.base_config()
  mesh = sharding.make_mesh()
  tx, _ = optim.create_optimizer(config, steps_per_epoch=FLAGS.steps)
  model = create_model(FLAGS.model, input_shape=shape, num_classes=10)
  state = jax.device_put(create_train_state(model, tx), sharding.replicated(mesh))
  n = FLAGS.batch_size * FLAGS.steps
  rng = np.random.default_rng(0)
  images = jax.device_put(rng.integers(0, 256, (n, *shape), dtype=np.uint8))
  labels = jax.device_put(rng.integers(0, 10, n).astype(np.int32))
  perm = jnp.arange(n)
  cfg = StepConfig()
  step_fn = jitted.make_train_fn(cfg, mesh, FLAGS.batch_size, seed=0)

  def run_loop(state):
    for i in range(FLAGS.steps):
      state, metrics = step_fn(state, images, labels, perm, i)
    return state, metrics

  # The step's own compiler options, which jax takes on the outermost jit only.
  @functools.partial(jax.jit, compiler_options=jitted.train_compiler_options(
      cfg, mesh, FLAGS.batch_size))
  def run_scan(state):
    body = lambda s, i: step_fn.__wrapped__(s, images, labels, perm, i)
    return jax.lax.scan(body, state, jnp.arange(FLAGS.steps))

  times = {"python loop": [], "lax.scan": []}
  for fn, name in ((run_loop, "python loop"), (run_scan, "lax.scan")):
    state, m = fn(state)  # compile
    jax.block_until_ready(m)
  for _ in range(FLAGS.repeats):
    for fn, name in ((run_loop, "python loop"), (run_scan, "lax.scan")):
      start = time.perf_counter()
      state, m = fn(state)
      jax.block_until_ready(m)
      times[name].append(time.perf_counter() - start)
  rates = {k: n / statistics.median(v) for k, v in times.items()}
  hlo = {"python loop": step_fn.lower(state, images, labels, perm, 0).compile().as_text(),
         "lax.scan": run_scan.lower(state).compile().as_text()}
  print(f"{FLAGS.model}, batch {FLAGS.batch_size}, {jax.devices()[0].platform}:")
  for name, rate in rates.items():
    odd = common.non_canonical_convolutions(hlo[name])
    print(f"  {name:12s} {rate:10,.0f} images/s; convolutions not in NHWC/HWIO order: "
          f"{len(odd)} {sorted(set(odd))}")
  print(f"  loop / scan = {rates['python loop'] / rates['lax.scan']:.2f}")


if __name__ == "__main__":
  app.run(main)
