"""Loading a folder of mixed-size JPEGs at a fixed size: ours against torchvision's
`ImageFolder` with `Resize`, time and peak memory, in the same run.

    python -m benchmarks.image_folder_load [--images=10000] [--size=64]
        [--peers=ours,torchvision,pil] [--repeats=N] [--root=DIR] [--json_out=PATH]
    python -m benchmarks.image_folder_load --smoke     # 24 tiny images, seconds

The photos are written first (seeded, into a temporary folder unless --root names one that
already holds them): `train/<class>/` and `test/<class>/`, 10 classes, sides drawn
independently from 200 to 1200 px, a fifth of them grayscale, smooth content so that the
JPEGs have photo-like sizes. Then each loader runs in its own process, one after another,
and reports its wall time and the peak resident memory of its process (VmHWM), with the
peak after its imports given apart so that the loading's own memory can be compared:
- ours:        research.data.load_dataset("folder", root, image_size=(S, S), channels=3,
               cache=False): every image decoded, resized, stacked in one uint8 array;
- torchvision: ImageFolder(root/split, transform=Compose([Resize((S, S)), PILToTensor()]))
               iterated fully, single process (as ours), the tensors stacked at the end;
- pil:         what torchvision does, by hand: Image.open, convert("RGB"), resize((S, S),
               BILINEAR), stacked; the peer where torchvision cannot be imported.
All three keep every image in memory, as ours must for training. The pixels are compared
too: with PIL's bilinear filter on both sides they should be identical.

torchvision from PyPI is built against the CUDA build of torch; next to the CPU build of
torch its C++ ops (nms, roi_align, ...) fail to register and `import torchvision` raises.
ImageFolder and Resize on PIL images use none of them, so --torchvision_without_ops
stubs out their registration, and --torchvision_path puts a torchvision installed apart
(`pip install --no-deps --target DIR torchvision`) on the path of that peer's process
only. Measured results: docs/performance.md.
"""

import importlib.util
import json
import multiprocessing
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import numpy as np
from PIL import Image

FLAGS = flags.FLAGS
flags.DEFINE_integer("images", 10_000, "JPEGs to write and load (a tenth of them in test/).")
flags.DEFINE_integer("size", 64, "Side of the square every image is resized to.")
flags.DEFINE_integer("min_side", 200, "Smallest side of a photo, in pixels.")
flags.DEFINE_integer("max_side", 1200, "Largest side of a photo, in pixels.")
flags.DEFINE_list("peers", ["ours", "torchvision", "pil"],
                  "Loaders to run; torchvision is left out by default where not installed.")
flags.DEFINE_integer("repeats", 1, "Runs of each loader, the order rotated each time; the "
                     "table shows each loader's median run.")
flags.DEFINE_string("root", "", "Folder for the photos; written if it holds none. Default: a "
                    "temporary folder, removed at the end.")
flags.DEFINE_bool("smoke", False, "24 tiny images at size 8, no matmul peak: checks that "
                  "every loader runs.")
flags.DEFINE_string("torchvision_path", "", "Put this folder first on the torchvision "
                    "peer's sys.path.")
flags.DEFINE_bool("torchvision_without_ops", False, "Stub out torchvision's C++ op "
                  "registration (see the docstring).")
flags.DEFINE_string("json_out", "", "Also write the results as JSON to this path.")
flags.DEFINE_string("child", "", "Internal: run one loader and print its result as JSON.")
flags.DEFINE_string("pixels_out", "", "Internal: where a child saves the pixels it loaded.")

CLASSES = 10
GRAY_FRACTION = 0.2


# --- The photos.

def _photo(args) -> None:
  """One smooth JPEG: a random 5x5 colour grid upscaled (bicubic), like a blurry photo."""
  path, seed, width, height, gray = args
  rng = np.random.default_rng(seed)
  grid = Image.fromarray(rng.integers(0, 256, (5, 5, 3), dtype=np.uint8))
  image = grid.resize((width, height), Image.Resampling.BICUBIC)
  (image.convert("L") if gray else image).save(path, quality=90)


def write_photos(root: pathlib.Path, count: int, min_side: int, max_side: int,
                 seed: int = 0) -> None:
  rng = np.random.default_rng(seed)
  sides = rng.integers(min_side, max_side + 1, (count, 2))
  gray = rng.random(count) < GRAY_FRACTION
  jobs = []
  for i in range(count):
    split = "test" if i // CLASSES % 10 == 0 else "train"
    folder = root / split / f"class_{i % CLASSES}"
    folder.mkdir(parents=True, exist_ok=True)
    jobs.append((folder / f"{i:05d}.jpg", seed * 1_000_003 + i, *map(int, sides[i]), gray[i]))
  with multiprocessing.get_context("spawn").Pool() as pool:  # no fork of a JAX process
    pool.map(_photo, jobs, chunksize=64)


def _photo_count(root: pathlib.Path) -> int:
  return sum(1 for _ in root.glob("*/*/*.jpg"))


# --- The loaders, each run in a child process.

def _peak_mb() -> float:
  """This process's peak resident memory (VmHWM). ru_maxrss would not do: after fork and
  exec it starts from the parent's peak."""
  with open("/proc/self/status") as f:
    return int(re.search(r"VmHWM:\s*(\d+) kB", f.read()).group(1)) / 1024


# Each loader returns (load, pixels): load() does the timed work and returns what it holds;
# pixels() turns that into one (N, S, S, 3) array, after the peak memory was read.

def _load_ours(root: pathlib.Path, size: int):
  from research.data import load_dataset
  def load():
    return load_dataset("folder", str(root), image_size=(size, size), channels=3, cache=False)
  return load, lambda data: np.concatenate([data.train.images, data.test.images])


def _load_torchvision(root: pathlib.Path, size: int):
  if FLAGS.torchvision_path:
    sys.path.insert(0, FLAGS.torchvision_path)
  import torch
  if FLAGS.torchvision_without_ops:
    torch.library.register_fake = lambda *args, **kwargs: (lambda fn: fn)
  from torchvision import datasets, transforms
  transform = transforms.Compose([transforms.Resize((size, size)), transforms.PILToTensor()])
  def load():
    return torch.stack([image for split in ("train", "test") for image, _ in
                        datasets.ImageFolder(str(root / split), transform=transform)])
  return load, lambda stacked: stacked.permute(0, 2, 3, 1).numpy()  # NCHW -> NHWC


def _load_pil(root: pathlib.Path, size: int):
  def load():
    paths = sorted(root.glob("train/*/*.jpg")) + sorted(root.glob("test/*/*.jpg"))
    images = []
    for path in paths:
      with Image.open(path) as image:
        images.append(np.asarray(image.convert("RGB").resize((size, size),
                                                            Image.Resampling.BILINEAR)))
    return np.stack(images)
  return load, lambda stacked: stacked


LOADERS = {"ours": _load_ours, "torchvision": _load_torchvision, "pil": _load_pil}


def run_child(name: str, root: pathlib.Path, size: int) -> dict:
  load, to_pixels = LOADERS[name](root, size)
  after_imports = _peak_mb()
  start = time.perf_counter()
  held = load()
  seconds = time.perf_counter() - start
  peak = _peak_mb()
  pixels = to_pixels(held)
  if FLAGS.pixels_out:
    np.save(FLAGS.pixels_out, pixels)
  return {"peer": name, "seconds": seconds, "images": len(pixels),
          "shape": list(pixels.shape[1:]), "peak_mb": peak, "after_imports_mb": after_imports}


def _spawn(name: str, root: pathlib.Path, size: int, pixels: pathlib.Path) -> dict:
  args = [sys.executable, "-m", "benchmarks.image_folder_load", f"--child={name}",
          f"--root={root}", f"--size={size}", f"--pixels_out={pixels}",
          f"--torchvision_path={FLAGS.torchvision_path}",
          f"--torchvision_without_ops={FLAGS.torchvision_without_ops}"]
  proc = subprocess.run(args, capture_output=True, text=True)
  if proc.returncode != 0:
    return {"peer": name, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
  return json.loads(proc.stdout.strip().splitlines()[-1])


# --- The run.

def _peers() -> list[str]:
  unknown = sorted(set(FLAGS.peers) - set(LOADERS))
  if unknown:
    raise app.UsageError(f"unknown peer(s) {unknown}; choose from {sorted(LOADERS)}")
  installed = FLAGS.torchvision_path or importlib.util.find_spec("torchvision")
  if FLAGS["peers"].present or installed:
    return list(FLAGS.peers)
  print("torchvision is not installed: its peer is left out (pil does what it does)")
  return [p for p in FLAGS.peers if p != "torchvision"]


def median_run(runs: list[dict]) -> dict:
  """The run with the median time (the upper one of an even count), all times kept."""
  done = sorted((r for r in runs if "error" not in r), key=lambda r: r["seconds"])
  if not done:
    return runs[-1]
  return done[len(done) // 2] | {"all_seconds": [r["seconds"] for r in runs if "error" not in r]}


def _compare_pixels(results: list[dict], folder: pathlib.Path) -> None:
  """The largest pixel difference of each peer to ours (0: the same images)."""
  if not (folder / "ours.npy").exists():
    return
  ours = np.load(folder / "ours.npy")
  for r in results:
    path = folder / f"{r['peer']}.npy"
    if r["peer"] != "ours" and "error" not in r and path.exists():
      theirs = np.load(path)
      same_shape = theirs.shape == ours.shape
      r["max_pixel_difference_to_ours"] = (
          int(np.abs(theirs.astype(int) - ours.astype(int)).max()) if same_shape else None)


def report(results: list[dict]) -> str:
  from benchmarks import common
  headers = ["loader", "images", "seconds", "images/s", "peak RSS MB",
             "after imports MB", "loading's own MB", "max |pixel - ours|"]
  rows = []
  for r in results:
    if "error" in r:
      rows.append([r["peer"]] + ["-"] * 7)
      continue
    rows.append([r["peer"], f"{r['images']:,}", f"{r['seconds']:.1f}",
                 f"{r['images'] / r['seconds']:.0f}", f"{r['peak_mb']:.0f}",
                 f"{r['after_imports_mb']:.0f}", f"{r['peak_mb'] - r['after_imports_mb']:.0f}",
                 common.fmt(r.get("max_pixel_difference_to_ours"), "d")])
  return common.markdown_table(headers, rows)


def ratios(results: list[dict]) -> dict:
  """ours / each peer: time, and the loading's own memory."""
  done = {r["peer"]: r for r in results if "error" not in r}
  if "ours" not in done:
    return {}
  ours = done["ours"]
  def own(r):
    return r["peak_mb"] - r["after_imports_mb"]
  return {peer: {"time": ours["seconds"] / r["seconds"], "memory": own(ours) / own(r)}
          for peer, r in done.items() if peer != "ours"}


def main(argv):
  del argv
  if FLAGS.child:
    print(json.dumps(run_child(FLAGS.child, pathlib.Path(FLAGS.root), FLAGS.size)))
    return
  from benchmarks import common
  count, size = (24, 8) if FLAGS.smoke else (FLAGS.images, FLAGS.size)
  min_side, max_side = (16, 80) if FLAGS.smoke else (FLAGS.min_side, FLAGS.max_side)
  peers = _peers()
  machine = common.machine_description()
  print(common.describe(machine))
  peak = None if FLAGS.smoke else common.matmul_peak_jax(2048, repeats=10, per_repeat=1)
  print(f"matmul peak (2048x2048 float32, jax.jit, best of 10): {common.fmt(peak)} GFLOP/s")
  with tempfile.TemporaryDirectory() as scratch:
    scratch = pathlib.Path(scratch)
    root = pathlib.Path(FLAGS.root) if FLAGS.root else scratch / "photos"
    if _photo_count(root) != count:
      start = time.perf_counter()
      write_photos(root, count, min_side, max_side)
      print(f"wrote {count:,} JPEGs to {root} in {time.perf_counter() - start:.0f} s",
            file=sys.stderr, flush=True)
    runs = {name: [] for name in peers}
    for repeat in range(FLAGS.repeats):
      for i in range(len(peers)):  # the order rotates with the repeat
        name = peers[(i + repeat) % len(peers)]
        runs[name].append(_spawn(name, root, size, scratch / f"{name}.npy"))
        print(f"  {name}: {runs[name][-1]}", file=sys.stderr, flush=True)
    results = [median_run(runs[name]) for name in peers]
    _compare_pixels(results, scratch)
  print()
  print(f"{count:,} JPEGs ({min_side}-{max_side} px sides, {GRAY_FRACTION:.0%} grayscale) "
        f"loaded at {size}x{size}x3, one loader after another, each in its own process; "
        f"the median of {FLAGS.repeats} run(s), the order rotated each time:")
  print()
  print(report(results))
  print()
  for r in results:
    if "error" in r:
      print(f"{r['peer']} failed: {r['error']}")
  for peer, r in ratios(results).items():
    print(f"ours / {peer}: time {r['time']:.2f}x, loading's own memory "
          f"{r['memory']:.2f}x (below 1: ours takes less)")
  if FLAGS.json_out:
    common.write_json(FLAGS.json_out, {
        "benchmark": "image_folder_load", "machine": machine, "matmul_peak_gflops": peak,
        "images": count, "size": size, "sides": [min_side, max_side],
        "results": results, "ratios": ratios(results)})
    print(f"wrote {FLAGS.json_out}")


if __name__ == "__main__":
  app.run(main)
