"""One convolution's gradients, called plainly and as iterations of `lax.scan`, with
autodiff's gradient convolutions and with the models' own (`layers.nhwc_conv`), which
are the same convolutions written in the one dimension order XLA:CPU's kernels take.

    python -m benchmarks.scan_conv_grads [--batch_size=64] [--iterations=10]

benchmarks/scan_vs_loop.py shows the cause of the scan trap on XLA:CPU: its
ConvCanonicalization pass puts convolutions into NHWC/HWIO -> NHWC order only in a
program's entry computation, so autodiff's gradient convolutions inside a while loop
("f01b_i01o->01bf", "b01f_01oi->b01f") run as generic emitted loops. `nhwc_conv`'s VJP
writes the kernel and input gradients as NHWC/HWIO convolutions with explicit
transposes, which need no canonicalisation; its gradients are bitwise autodiff's. The
times are interleaved medians per call and per scan iteration; measured results:
docs/performance.md.
"""

import statistics
import time

from absl import app
from absl import flags
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from research import xla_cpu

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch_size", 64, "Images per call.")
flags.DEFINE_integer("iterations", 10, "Calls, and scan iterations, per timed repeat.")
flags.DEFINE_integer("repeats", 3, "Timed repeats (median).")


def conv(x, w):
  """Stride 1, 'VALID', with autodiff's gradients."""
  return lax.conv_general_dilated(x, w, (1, 1), "VALID",
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))


def nhwc_conv(x, w):
  """The same, with the gradients that research/xla_cpu.py gives models on CPU."""
  return xla_cpu.nhwc_conv(x, w, ((0, 0), (0, 0)))


def variants(conv_fn, n: int):
  """(plain, scanned): jitted functions of (x, w, g) -> both gradients; the plain one
  computes them once, the scanned one n times (inputs shifted so nothing is hoisted)."""
  grads = lambda x, w, g: jax.vjp(conv_fn, x, w)[1](g)

  def scanned(x, w, g):
    def body(total, i):
      return jax.tree.map(jnp.add, total, grads(x + i, w, g)), None
    zeros = (jnp.zeros_like(x), jnp.zeros_like(w))
    return lax.scan(body, zeros, jnp.arange(n, dtype=x.dtype))[0]

  return jax.jit(grads), jax.jit(scanned)


def main(_):
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  b, n = FLAGS.batch_size, FLAGS.iterations
  x = jax.random.normal(k1, (b, 13, 13, 32))
  w = jax.random.normal(k2, (3, 3, 32, 64)) * 0.1
  g = jax.random.normal(k3, (b, 11, 11, 64))
  print(f"gradients of a 3x3 convolution 13x13x32 -> 64, batch {b}, "
        f"{jax.devices()[0].platform}; ms per call or per scan iteration (median of "
        f"{FLAGS.repeats}, interleaved):")
  compiled, per_call, results = {}, {}, {}
  for name, conv_fn in (("autodiff", conv), ("nhwc_conv", nhwc_conv)):
    plain, scanned = variants(conv_fn, n)
    for kind, fn, calls in (("plain", plain, n), ("lax.scan", scanned, 1)):
      compiled[name, kind] = fn.lower(x, w, g).compile()
      jax.block_until_ready(compiled[name, kind](x, w, g))
      per_call[name, kind] = calls
    results[name] = plain(x, w, g)

  def timed(key):
    def run() -> float:
      start = time.perf_counter()
      for _ in range(per_call[key]):
        out = compiled[key](x, w, g)
      jax.block_until_ready(out)
      return time.perf_counter() - start
    return run

  times = common.interleaved({key: timed(key) for key in compiled}, FLAGS.repeats)
  for (name, kind), seconds in times.items():
    odd = sorted(set(common.non_canonical_convolutions(compiled[name, kind].as_text())))
    print(f"  {name:15s} {kind:9s} {statistics.median(seconds) * 1000 / n:9.2f} ms; "
          f"convolutions not in NHWC/HWIO order: {odd}")
  diff = max(float(np.max(np.abs(a - c))) for a, c in
             zip(results["autodiff"], results["nhwc_conv"]))
  print(f"  largest difference between the two gradients: {diff:.3g}")


if __name__ == "__main__":
  app.run(main)
