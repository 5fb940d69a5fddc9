"""The benchmark harness: interleaved timed repeats, medians, ratios, a measured matmul
peak, a description of the machine, and markdown tables.

Timing rules, used by every benchmark here:
- Each candidate runs one untimed warm-up (compilation, allocator, thread pools).
- Repeats are interleaved: repeat r runs every candidate once, in an order rotated by r,
  so that a slow spell of a shared machine hits all candidates alike.
- A candidate's result is the median over repeats; the spread (min, max) is kept too.
"""

from collections.abc import Callable, Sequence
import json
import math
import os
import platform
import re
import statistics
import time

import jax
import jax.numpy as jnp

from research import runtime


# --- Timing.

def calibrate_steps(run: Callable[[int], float], target_s: float = 0.7,
                    min_steps: int = 2, max_steps: int = 5000) -> int:
  """Steps per repeat so that one repeat takes about `target_s`. `run(steps)` runs that
  many steps (warm) and returns the seconds they took."""
  steps, elapsed = 1, run(1)
  while elapsed < target_s / 10 and steps < max_steps:   # measure at least ~70 ms
    steps = min(max_steps, steps * 8)
    elapsed = run(steps)
  per_step = max(elapsed / steps, 1e-7)
  return int(min(max_steps, max(min_steps, math.ceil(target_s / per_step))))


def interleaved(candidates: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
  """Runs each candidate `repeats` times, interleaved and rotated; each call returns the
  seconds it took (measured inside, so set-up outside the timed work is excluded)."""
  names = list(candidates)
  times = {name: [] for name in names}
  for r in range(repeats):
    shift = r % len(names) if names else 0
    for name in names[shift:] + names[:shift]:
      times[name].append(candidates[name]())
  return times


def timed(work: Callable[[int], None]) -> Callable[[int], float]:
  """run(steps) -> seconds, for a `work(steps)` that does the steps and blocks at the
  end."""
  def run(steps: int) -> float:
    start = time.perf_counter()
    work(steps)
    return time.perf_counter() - start
  return run


def measure(runs: dict[str, Callable[[int], float]], repeats: int, target_s: float,
            steps: int = 0, max_steps: dict[str, int] | None = None
            ) -> tuple[dict[str, int], dict[str, list[float]]]:
  """Warms each candidate up (one untimed step), gives it `steps` steps per repeat (or
  as many as take about `target_s`, at most its `max_steps`), then times the repeats
  interleaved. Returns (steps per repeat, seconds of each repeat), per candidate."""
  counts = {}
  for name, run in runs.items():
    run(1)   # warm-up: compilation, thread pools, allocator
    cap = (max_steps or {}).get(name, 5000)
    counts[name] = min(steps, cap) if steps else calibrate_steps(run, target_s,
                                                                 max_steps=cap)
  times = interleaved({name: (lambda run=run, n=counts[name]: run(n))
                       for name, run in runs.items()}, repeats)
  return counts, times


def summary(seconds: Sequence[float], work: float) -> dict:
  """Rates (work per second) from repeat times: median, min and max."""
  rates = [work / s for s in seconds]
  return {"median": statistics.median(rates), "min": min(rates), "max": max(rates),
          "seconds": list(seconds)}


def ratio(ours: float | None, theirs: float | None) -> float | None:
  if not ours or not theirs:
    return None
  return ours / theirs


# --- Peaks and FLOPs.

def _best_rate(fn: Callable[[], None], flops: float, repeats: int) -> float:
  fn()  # warm-up
  best = math.inf
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return flops / best / 1e9


def matmul_peak_jax(n: int = 2048, repeats: int = 5, per_repeat: int = 3,
                    dtype=jnp.float32) -> float:
  """GFLOP/s of an n x n matmul under jit (float32 unless `dtype`, at JAX's default
  precision), best of `repeats` (a peak is what the machine can do; a shared machine
  only lowers it)."""
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  matmul = jax.jit(lambda a, b: a @ b)

  def run():
    for _ in range(per_repeat):
      out = matmul(a, b)
    out.block_until_ready()

  return _best_rate(run, 2.0 * n ** 3 * per_repeat, repeats)


def matmul_peak_torch(n: int = 2048, repeats: int = 5, per_repeat: int = 3) -> float | None:
  """The same matmul in torch, for reference; None without torch."""
  try:
    import torch
  except ImportError:
    return None
  g = torch.Generator().manual_seed(0)
  a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)

  def run():
    for _ in range(per_repeat):
      torch.mm(a, b)

  return _best_rate(run, 2.0 * n ** 3 * per_repeat, repeats)


def compiled_flops(jitted, *args) -> float | None:
  """FLOPs of one call of a jitted function, from XLA's cost analysis of the compiled
  executable. jax 0.10 returns a dict; older versions returned a list of dicts (one per
  computation); both are handled. None if the backend reports nothing."""
  analysis = jitted.lower(*args).compile().cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  if not analysis:
    return None
  flops = analysis.get("flops")
  return float(flops) if flops and flops > 0 else None


# --- The machine.

# The one order of convolution dimensions that XLA:CPU's Eigen and YNNPACK kernels take.
CANONICAL_CONVOLUTION = "b01f_01io->b01f"


def non_canonical_convolutions(hlo_text: str) -> list[str]:
  """The dimension labels of every convolution in an optimised HLO module that is not in
  CANONICAL_CONVOLUTION's order (benchmarks/scan_vs_loop.py explains why it matters)."""
  labels = re.findall(r" convolution\(.*?dim_labels=([\w>-]+)", hlo_text)
  return [x for x in labels if x != CANONICAL_CONVOLUTION]


def _has_flag(flag: str) -> bool:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("flags"):
          return flag in line.split()
  except OSError:
    pass
  return False


def _version(module: str) -> str | None:
  try:
    from importlib import metadata
    return metadata.version(module)
  except Exception:  # not installed
    return None


def machine_description() -> dict:
  """CPU, cores, load, and library versions: printed above every result table."""
  info = {
      "cpu": runtime.host_cpu(),
      "avx512": _has_flag("avx512f"),
      "cores": os.cpu_count(),
      "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
      "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
      "python": platform.python_version(),
      "jax_backend": jax.default_backend(),
      "jax_devices": jax.device_count(),
      "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
  }
  for package in ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "keras"):
    info[package] = _version(package)
  try:
    import torch
    info["torch_threads"] = torch.get_num_threads()
  except ImportError:
    pass
  return info


def describe(info: dict) -> str:
  load = info.get("load_average_1min")
  lines = [
      f"machine: {info['cpu']}{' (AVX-512)' if info.get('avx512') else ''}, "
      f"{info['cores_usable']} usable of {info['cores']} cores, 1-min load average "
      f"{load:.2f}" if load is not None else f"machine: {info['cpu']}",
      "versions: " + ", ".join(
          f"{k} {info[k]}" for k in ("python", "jax", "jaxlib", "flax", "optax", "torch",
                                      "keras") if info.get(k)),
      f"jax backend {info['jax_backend']} x{info['jax_devices']}"
      + (f"; torch threads {info['torch_threads']}" if "torch_threads" in info else "")
      + (f"; XLA_FLAGS={info['XLA_FLAGS']}" if info.get("XLA_FLAGS") else ""),
  ]
  if load is not None and info.get("cores_usable") and load > 0.5 * info["cores_usable"]:
    lines.append(f"warning: the machine was busy at the start (load {load:.1f} on "
                 f"{info['cores_usable']} cores); absolute numbers are low and noisy, "
                 "ratios less so.")
    if info.get("torch_threads", 0) > 1:
      lines.append("warning: torch's OpenMP threads slow down many times over when the "
                   "cores are oversubscribed; re-run with --torch_threads=1 to see how "
                   "much.")
  return "\n".join(lines)


# --- Output.

def fmt(value, spec: str = ",.0f", missing: str = "-") -> str:
  if value is None or (isinstance(value, float) and not math.isfinite(value)):
    return missing
  return format(value, spec)


_NUMBER = re.compile(r"^[-+]?[\d,.]+[%x]?$|^-$")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  """A markdown table: columns of numbers right-aligned, the others left-aligned."""
  cols = range(len(headers))
  widths = [max([len(str(headers[i]))] + [len(str(r[i])) for r in rows]) for i in cols]
  right = [bool(rows) and all(_NUMBER.match(str(r[i])) for r in rows) for i in cols]

  def line(cells):
    return "| " + " | ".join(str(c).rjust(w) if r else str(c).ljust(w)
                             for c, w, r in zip(cells, widths, right)) + " |"

  sep = "|" + "|".join("-" * (w + 1) + (":" if r else "-") for w, r in zip(widths, right)) + "|"
  return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def write_json(path: str, payload: dict) -> None:
  if os.path.dirname(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(payload, f, indent=2, default=str)
    f.write("\n")


def parse_list(text: str) -> list[str]:
  return [s.strip() for s in text.split(",") if s.strip()]
