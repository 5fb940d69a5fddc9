"""Where a trained model looks: attribution maps and first-layer filters of a run.

    python -m research.interpret --workdir DIR [--num_images 8] [--out DIR]
                                 [--baseline black|mean]

writes DIR/interpret/maps.png (one row per test image: the image with its true and
predicted class, then saliency, SmoothGrad, Integrated Gradients and Grad-CAM) and
filters.png (the first conv layer's kernels). The run's model is restored as
research.predict restores it (research/inference.py). The images are a seeded sample of
the test split (the archives are sorted by class, so the first N would all be of one).
It runs on the CPU. Exit status 2 for a workdir without a readable run.

Every method explains the predicted class's logit (for a one-unit binary head: z for
class 1, -z for class 0) with respect to the input in the run's normalised space:
- saliency (Simonyan et al. 2014): its gradient;
- SmoothGrad (Smilkov et al. 2017): the gradient averaged over `samples` copies of the
  input with Gaussian noise of std `noise` x (max - min) of the image;
- Integrated Gradients (Sundararajan et al. 2017): (x - x') times the mean gradient at
  `steps` midpoints of the straight path from the baseline x' to x; the attributions sum
  to logit(x) - logit(x') up to the quadrature error. The baseline is a black image
  (pixels 0, normalised as the run does: the paper's choice for images), or `mean`, zero
  in normalised space (the training split's mean colour);
- Grad-CAM (Selvaraju et al. 2017): ReLU(sum_k a_k A_k) over the last conv layer's
  channels A_k (the models' `features`), a_k the spatial mean of the logit's gradient
  with respect to A_k, resized bilinearly to the input.
The maps shown are |attribution| summed over colour channels. Models without conv
layers (the MLP) get the first three; Grad-CAM and the filters say why not.

`randomize` re-initialises a model's layers from the top, as in the sanity checks of
Adebayo et al. (2018): a map that barely changes does not explain the model.
"""

import functools
import os
import pathlib
import sys

from absl import app
from absl import flags
from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from research import data as data_lib
from research import errors
from research import inference
from research import plots
from research import preprocess
from research.training import inputs

FLAGS = flags.FLAGS
METHODS = ("saliency", "smoothgrad", "integrated_gradients", "grad_cam")
TITLES = {"saliency": "saliency", "smoothgrad": "SmoothGrad",
          "integrated_gradients": "Integrated Gradients", "grad_cam": "Grad-CAM"}
BASELINES = ("black", "mean")
IG_STEPS = 64   # Integrated Gradients' midpoints: completeness within 1% (tests/test_interpret.py)


class NoConvLayers(errors.UserError):
  """Grad-CAM and the filter grid need conv layers."""


def target_logits(logits: jax.Array, target: jax.Array) -> jax.Array:
  """(N,) each example's float32 logit of its `target` class; for a one-unit binary head
  z scores class 1 and -z class 0."""
  logits = logits.astype(jnp.float32)
  if logits.shape[-1] == 1:
    return jnp.where(target == 1, logits[:, 0], -logits[:, 0])
  return jnp.take_along_axis(logits, target[:, None], axis=1)[:, 0]


def class_score(logits: jax.Array, target: jax.Array) -> jax.Array:
  """The target logits summed over the batch: the examples are independent, so the
  gradient of the sum is each one's own."""
  return jnp.sum(target_logits(logits, target))


@functools.partial(jax.jit, static_argnums=0)
def logits(graphdef: nnx.GraphDef, state: nnx.State, x: jax.Array) -> jax.Array:
  """The model's float32 logits in inference mode."""
  return nnx.merge(graphdef, state)(x).astype(jnp.float32)


def _input_gradient(graphdef, state, x, target):
  return jax.grad(lambda x: class_score(logits(graphdef, state, x), target))(x)


@functools.partial(jax.jit, static_argnums=0)
def saliency(graphdef, state, x, target):
  """d logit[target] / d x, per example."""
  return _input_gradient(graphdef, state, x, target)


@functools.partial(jax.jit, static_argnums=(0, 5))
def smoothgrad(graphdef, state, x, target, key, samples: int = 25, noise: float = 0.15):
  """The input gradient averaged over `samples` noisy copies of x, the noise's std
  `noise` times each image's value range (Smilkov et al. suggest 10-20%)."""
  spread = jnp.max(x, axis=(1, 2, 3), keepdims=True) - jnp.min(x, axis=(1, 2, 3), keepdims=True)
  def noisy_gradient(key):
    return _input_gradient(graphdef, state, x + noise * spread * jax.random.normal(
        key, x.shape, x.dtype), target)
  return jnp.mean(jax.vmap(noisy_gradient)(jax.random.split(key, samples)), axis=0)


@functools.partial(jax.jit, static_argnums=(0, 5))
def integrated_gradients(graphdef, state, x, target, baseline, steps: int = IG_STEPS):
  """(x - baseline) times the mean input gradient at the midpoints of `steps` equal
  segments of the straight path from `baseline` to x (the midpoint rule)."""
  def gradient_at(alpha):
    return _input_gradient(graphdef, state, baseline + alpha * (x - baseline), target)
  alphas = (jnp.arange(steps, dtype=x.dtype) + 0.5) / steps
  return (x - baseline) * jnp.mean(jax.vmap(gradient_at)(alphas), axis=0)


@functools.partial(jax.jit, static_argnums=0)
def grad_cam(graphdef, state, x, target):
  """ReLU(sum_k a_k A_k) over the last conv layer's channels, a_k the spatial mean of
  d logit / d A_k, resized to the input's height and width."""
  model = nnx.merge(graphdef, state)
  _check_conv(model, "Grad-CAM")
  features = model.features(x)
  grads = jax.grad(lambda a: class_score(model.classify(a), target))(features)
  weights = jnp.mean(grads, axis=(1, 2), keepdims=True)
  cam = jax.nn.relu(jnp.sum(weights * features, axis=-1)).astype(jnp.float32)
  return jax.image.resize(cam, (x.shape[0], *x.shape[1:3]), "bilinear")


def _check_conv(model: nnx.Module, what: str) -> None:
  if not hasattr(model, "features") or not getattr(model, "convs", None):
    raise NoConvLayers(f"{what} needs a model that exposes its conv layers (`convs`, "
                       f"`features`, `classify`), which {type(model).__name__} does not; "
                       "saliency, SmoothGrad and Integrated Gradients work on any model.")


def first_layer_filters(model: nnx.Module) -> np.ndarray:
  """The first conv layer's kernels, (height, width, in channels, filters)."""
  _check_conv(model, "The filter grid")
  return np.asarray(model.convs[0].kernel.get_value())


def pixel_map(attribution: jax.Array) -> np.ndarray:
  """(N, H, W, C) attributions -> (N, H, W) maps: |attribution| summed over channels;
  Grad-CAM's (N, H, W) maps as they are."""
  attribution = jnp.abs(attribution)
  return np.asarray(attribution.sum(-1) if attribution.ndim == 4 else attribution)


def explain(graphdef, state, x, target, baseline, key, methods=METHODS) -> dict:
  """{method: (N, H, W) map} for each of `methods`."""
  compute = {
      "saliency": lambda: saliency(graphdef, state, x, target),
      "smoothgrad": lambda: smoothgrad(graphdef, state, x, target, key),
      # steps passed as completeness_errors passes them: one compiled program for both.
      "integrated_gradients": lambda: integrated_gradients(graphdef, state, x, target,
                                                           baseline, IG_STEPS),
      "grad_cam": lambda: grad_cam(graphdef, state, x, target)}
  return {m: pixel_map(compute[m]()) for m in methods}


def weight_layers(model: nnx.Module) -> list[nnx.Module]:
  """The conv and dense layers of a registered model, input first, head last."""
  return [*getattr(model, "convs", ()), *getattr(model, "hidden", ()),
          *getattr(model, "dense", ()), model.head]


def randomize(model: nnx.Module, top_layers: int, key: jax.Array) -> nnx.Module:
  """A copy of `model` whose `top_layers` last weight layers are re-initialised as flax
  initialises them for every registered model (LeCun-normal kernels, zero biases):
  Adebayo et al.'s cascading randomisation; all of them is the fully random model.
  BatchNorm statistics and scales are kept."""
  model = nnx.clone(model)
  layers = weight_layers(model)[::-1]
  shapes = tuple((k.shape, k.dtype) for k in (layer.kernel.get_value() for layer in layers))
  for layer, kernel in zip(layers[:top_layers], _lecun_normal_kernels(key, shapes)):
    _replace(layer.kernel, kernel)
    if layer.bias is not None:
      bias = layer.bias.get_value()
      _replace(layer.bias, np.zeros(bias.shape, bias.dtype))
  return model


@functools.partial(jax.jit, static_argnums=1)
def _lecun_normal_kernels(key: jax.Array, shapes: tuple) -> list[jax.Array]:
  """A fresh kernel for each (shape, dtype), the i-th from key folded with i: one
  program for every stage of a cascade (op by op, each new shape compiles its own)."""
  init = nnx.initializers.lecun_normal()
  return [init(jax.random.fold_in(key, i), shape, dtype)
          for i, (shape, dtype) in enumerate(shapes)]


def _replace(param: nnx.Param, value: jax.Array) -> None:
  """Sets `value` on the device of the old one: a jitted method given the randomised
  model then reuses the trained model's compilation (an uncommitted array would not)."""
  param.set_value(jax.device_put(value, param.get_value().sharding))


def layer_names(model: nnx.Module) -> list[str]:
  """Names of `weight_layers`, input first: conv1.., dense1.., head."""
  convs = len(getattr(model, "convs", ()))
  dense = len(weight_layers(model)) - convs - 1
  return ([f"conv{i + 1}" for i in range(convs)] + [f"dense{i + 1}" for i in range(dense)]
          + ["head"])


def rank_correlations(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Spearman's rank correlation of each pair of (N, H, W) maps, as Adebayo et al.
  compare a trained model's maps with a randomised one's."""
  import scipy.stats   # here: about a second to import, which a training run need not pay
  return np.array([scipy.stats.spearmanr(p.ravel(), q.ravel()).statistic
                   if np.ptp(p) and np.ptp(q) else np.nan   # a constant map ranks nothing
                   for p, q in zip(a, b)])


def completeness_errors(graphdef, state, x, target, baseline,
                        steps: int = IG_STEPS) -> np.ndarray:
  """Per example, |sum of IG attributions - (logit(x) - logit(baseline))| relative to
  |logit(x) - logit(baseline)|: 0 for exact completeness."""
  attributions = integrated_gradients(graphdef, state, x, target, baseline, steps)
  difference = np.asarray(target_logits(logits(graphdef, state, x), target)
                          - target_logits(logits(graphdef, state, baseline), target))
  return np.abs(np.asarray(attributions.sum((1, 2, 3))) - difference) / np.abs(difference)


def sanity_checks(restored: inference.RestoredModel, images: np.ndarray,
                  baseline: str = "black", seed: int = 0) -> dict:
  """Adebayo et al.'s cascading randomisation on `images`, for the trained model's
  predicted classes: the maps of the trained model and after re-initialising the top 1,
  2, ... weight layers, with each stage's rank correlations to the trained maps; and
  Integrated Gradients' completeness errors. {"layers": names from the head down,
  "maps": [{method: maps}] (trained first), "correlations": {method: (stages, N)},
  "completeness": (N,)}."""
  model = model_of(restored)
  graphdef, state = nnx.split(model)
  x = normalized(restored, images)
  target = jnp.asarray(np.asarray(restored(images)["probabilities"]).argmax(-1))
  x_baseline = baseline_for(baseline, restored, x)
  methods = METHODS if getattr(model, "convs", None) else METHODS[:-1]
  key = jax.random.key(seed)
  explain_model = lambda m: explain(*nnx.split(m), x, target, x_baseline, key, methods)
  maps = [explain_model(model)]
  layers = layer_names(model)[::-1]
  for top in range(1, len(layers) + 1):
    maps.append(explain_model(randomize(model, top, jax.random.fold_in(key, 1))))
  correlations = {m: np.stack([rank_correlations(maps[0][m], stage[m]) for stage in maps[1:]])
                  for m in methods}
  return {"layers": layers, "maps": maps, "correlations": correlations,
          "completeness": completeness_errors(graphdef, state, x, target, x_baseline)}


def baseline_for(kind: str, restored: inference.RestoredModel, x: jax.Array) -> jax.Array:
  """Integrated Gradients' x': a black image normalised as the run does, or `mean`,
  zero in normalised space."""
  if kind == "mean":
    return jnp.zeros_like(x)
  black = jnp.zeros((1, *restored.image_shape), restored.image_dtype)
  return jnp.broadcast_to(normalized(restored, black), x.shape)


def normalized(restored: inference.RestoredModel, images) -> jax.Array:
  config = restored.config
  return preprocess.normalize(jnp.asarray(images), tuple(config.normalize_mean),
                              tuple(config.normalize_std), config.compute_dtype)


def sample_test_split(restored: inference.RestoredModel, count: int) -> data_lib.Split:
  """`count` test images of the run's dataset, a sample seeded by split_seed."""
  test = inputs.load_full(restored.config).test
  return inputs.subset(test, count, restored.config.split_seed)


def model_of(restored: inference.RestoredModel) -> nnx.Module:
  return nnx.merge(restored.graphdef, restored.params, restored.batch_stats)


def interpret_run(restored: inference.RestoredModel, images: np.ndarray,
                  baseline: str = "black", seed: int = 0) -> tuple[dict, np.ndarray]:
  """({method: (N, H, W) map}, predicted classes) for `images`, the methods the model
  allows; a NoConvLayers note goes to stderr."""
  model = model_of(restored)
  graphdef, state = nnx.split(model)
  x = normalized(restored, images)
  predicted = np.asarray(restored(images)["probabilities"]).argmax(-1)
  methods = METHODS
  try:
    _check_conv(model, "Grad-CAM")
  except NoConvLayers as e:
    print(f"note: {e}", file=sys.stderr)
    methods = METHODS[:-1]
  maps = explain(graphdef, state, x, jnp.asarray(predicted), baseline_for(baseline, restored, x),
                 jax.random.key(seed), methods)
  return maps, predicted


def draw_maps(images: np.ndarray, maps: dict, labels: np.ndarray, predicted: np.ndarray,
              class_names, path: pathlib.Path, title: str = "") -> None:
  """One row per image: the image titled with its true and predicted class, then one
  heat map per method (Grad-CAM over the faded image)."""
  plt = plots.pyplot()
  columns = 1 + len(maps)
  fig, axes = plt.subplots(len(images), columns, figsize=(2 * columns, 2 * len(images)),
                           squeeze=False)
  cmap = "gray" if images.shape[-1] == 1 else None
  for row, image in enumerate(images):
    shown = image[..., 0] if images.shape[-1] == 1 else image
    axes[row, 0].imshow(shown, cmap=cmap)
    mark = "" if labels[row] == predicted[row] else " (wrong)"
    axes[row, 0].set_title(f"true {class_names[labels[row]]}\npred "
                           f"{class_names[predicted[row]]}{mark}", fontsize=8)
    for col, (method, heat) in enumerate(maps.items(), start=1):
      ax = axes[row, col]
      if method == "grad_cam":
        ax.imshow(shown, cmap=cmap, alpha=0.5)
        ax.imshow(heat[row], cmap="jet", alpha=0.5)
      else:
        ax.imshow(heat[row], cmap="hot")
      if row == 0:
        ax.set_title(TITLES[method], fontsize=9)
  for ax in axes.ravel():
    ax.axis("off")
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  plots.save_png(fig, path)
  plt.close(fig)


def draw_filters(kernels: np.ndarray, path: pathlib.Path, title: str = "") -> None:
  """The first layer's filters in a grid, each scaled to its own range: RGB for
  3-channel input, gray otherwise (the mean over input channels)."""
  plt = plots.pyplot()
  count = kernels.shape[-1]
  side = int(np.ceil(np.sqrt(count)))
  fig, axes = plt.subplots(side, side, figsize=(1.2 * side, 1.2 * side), squeeze=False)
  for i, ax in enumerate(axes.ravel()):
    ax.axis("off")
    if i >= count:
      continue
    k = kernels[..., i]
    k = (k - k.min()) / max(float(k.max() - k.min()), 1e-12)
    ax.imshow(k if k.shape[-1] == 3 else k.mean(-1), cmap=None if k.shape[-1] == 3 else "gray",
              interpolation="nearest")
  fig.suptitle(title or f"first conv layer: {count} filters {kernels.shape[0]}x{kernels.shape[1]}",
               fontsize=9)
  fig.tight_layout()
  plots.save_png(fig, path)
  plt.close(fig)


def write_figures(workdir: str, num_images: int, out: pathlib.Path, baseline: str = "black",
                  seed: int = 0) -> list[pathlib.Path]:
  """maps.png (and filters.png for a model with conv layers) of the run in `workdir`."""
  restored = inference.restore(workdir)
  if restored.image_dtype != np.uint8:
    raise errors.ConfigError(f"{workdir} was trained on {restored.image_dtype} data "
                             f"({restored.config.dataset}), not on images: there is no "
                             "image to draw the maps over.")
  split = sample_test_split(restored, num_images)
  maps, predicted = interpret_run(restored, split.images, baseline, seed)
  out.mkdir(parents=True, exist_ok=True)
  written = [out / "maps.png"]
  draw_maps(split.images, maps, split.labels, predicted, restored.class_names, written[0],
            f"{workdir} (step {restored.step}); IG baseline: {baseline}")
  model = model_of(restored)
  if "grad_cam" in maps:
    written.append(out / "filters.png")
    draw_filters(first_layer_filters(model), written[-1])
  else:
    print("note: no filters.png: " + str(NoConvLayers(
        f"{type(model).__name__} has no conv layers.")), file=sys.stderr)
  return written


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS["verbosity"].present:   # orbax warns that the checkpoints are read-only
    logging.set_verbosity(logging.ERROR)
  jax.config.update("jax_platforms", "cpu")
  out = pathlib.Path(FLAGS.out or os.path.join(FLAGS.workdir, "interpret"))
  try:
    written = write_figures(FLAGS.workdir, FLAGS.num_images, out, FLAGS.baseline)
  except (errors.UserError, data_lib.DataError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print("wrote " + ", ".join(map(str, written)))


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "The trained run's directory.", required=True)
  flags.DEFINE_integer("num_images", 8, "Test images to explain, one row each.",
                       lower_bound=1)
  flags.DEFINE_string("out", None, "Where to write the PNGs (default: WORKDIR/interpret).")
  flags.DEFINE_enum("baseline", "black", BASELINES, "Integrated Gradients' baseline: a "
                    "black image, or mean (zero in the run's normalised input space).")
  app.run(main)
