"""A Python loop over one train step per call against several steps per call
(`config.steps_per_call`: a `lax.fori_loop` over the steps), with the library's
convolutions and with autodiff's.

    python -m benchmarks.scan_vs_loop [--model=mnist_cnn] [--batch_size=64] [--steps=50]

The same steps, interleaved, with repeats and medians; images/s and the ratio to the
Python loop. For each variant it also prints, from the optimised HLO, the convolutions
left in a dimension order other than NHWC/HWIO -> NHWC ("b01f_01io->b01f").

Why that matters: XLA:CPU's library kernels (Eigen, YNNPACK) take only that order, and
its ConvCanonicalization pass, which transposes the operands into it, visits the entry
computation only (openxla/xla xla/service/cpu/conv_canonicalization.cc). Autodiff writes
a kernel gradient as a convolution over the batch ("f01b_i01o->01bf") and an input
gradient with the kernel's channel axes swapped ("b01f_01oi->b01f"). With one step per
call both are canonicalised; inside a while loop they stay as they are and run as XLA's
generic emitted loops: several steps per call with autodiff's convolutions ran 3 to 40
times slower than the Python loop (issue 2; the kernel gradient of one 3x3 convolution,
13x13x32 -> 64 channels, took 2.8 to 7 ms per call at batch 64 and 313 ms as a loop
iteration; 2-core Xeon, jax 0.10.2). `research/models/layers.py`'s convolution writes its
own gradients in the canonical order on CPU, which makes several steps per call faster
than the Python loop.
"""

import contextlib
import statistics
import time
from unittest import mock

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from research import configs, sharding
from research.models import create_model, layers
from research.training import jitted, optim
from research.training.state import create_train_state
from research.training.step import StepConfig

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "mnist_cnn", "Registered model name.")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_integer("steps", 50, "Steps per timed repeat, and per call when fused.")
flags.DEFINE_integer("repeats", 3, "Timed repeats of each variant (interleaved).")

LOOP, FUSED, AUTODIFF = ("python loop", "fused steps", "fused, autodiff convs")


def autodiff_convolutions():
  """While tracing: the models' convolutions without their own gradients."""
  return mock.patch.object(layers, "_nhwc_applies", lambda *args, **kwargs: False)


def main(_):
  shape = (28, 28, 1) if FLAGS.model in ("mlp", "mnist_cnn", "minimal_cnn") else (32, 32, 3)
  config = configs.base_config()
  mesh = sharding.make_mesh()
  tx, _ = optim.create_optimizer(config, steps_per_epoch=FLAGS.steps)
  model = create_model(FLAGS.model, input_shape=shape, num_classes=10)
  initial = jax.device_put(create_train_state(model, tx), sharding.replicated(mesh))
  n = FLAGS.batch_size * FLAGS.steps
  rng = np.random.default_rng(0)
  data = jax.device_put((rng.integers(0, 256, (n, *shape), dtype=np.uint8),
                         rng.integers(0, 10, n).astype(np.int32), jnp.arange(n)))
  variants = {LOOP: (1, contextlib.nullcontext), FUSED: (FLAGS.steps, contextlib.nullcontext),
              AUTODIFF: (FLAGS.steps, autodiff_convolutions)}
  runs, hlo = {}, {}
  for name, (per_call, tracing) in variants.items():
    fn = jitted.make_train_fn(StepConfig(), mesh, FLAGS.batch_size, seed=0,
                              steps_per_call=per_call)
    with tracing():
      compiled = fn.lower(initial, *data, 0, per_call).compile()
    hlo[name] = compiled.as_text()

    def run(compiled=compiled, per_call=per_call) -> float:
      state = jax.tree.map(jnp.copy, initial)   # each call donates its state
      jax.block_until_ready(state)
      start = time.perf_counter()
      for i in range(0, FLAGS.steps, per_call):
        state, metrics = compiled(state, *data, i, per_call)
      jax.block_until_ready(metrics)
      return time.perf_counter() - start

    run()   # warm-up
    runs[name] = run
  times = common.interleaved(runs, FLAGS.repeats)
  rates = {name: n / statistics.median(t) for name, t in times.items()}
  print(f"{FLAGS.model}, batch {FLAGS.batch_size}, {FLAGS.steps} steps, "
        f"{jax.devices()[0].platform}:")
  for name, rate in rates.items():
    odd = common.non_canonical_convolutions(hlo[name])
    print(f"  {name:22s} {rate:10,.0f} images/s ({rate / rates[LOOP]:5.2f} of the loop); "
          f"convolutions not in NHWC/HWIO order: {len(odd)} {sorted(set(odd))}")


if __name__ == "__main__":
  app.run(main)
