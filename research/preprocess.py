"""On-device preprocessing inside the jitted step: normalisation and augmentation.

Images stay uint8 on the device until the step turns a gathered batch into the compute
dtype (float32, or bfloat16 with `config.compute_dtype`), so the resident dataset is four
times smaller, and no per-image Python runs per step. Datasets of real values (MNIST-1D)
are float32 already and are not rescaled. Crop, flip and cutout only move and zero pixels,
so they work in any dtype; rotate and scale interpolate in float32 and give back the
images' dtype.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.scipy import ndimage

from research import errors

# alternating_flip: each image mirrored in alternate epochs, starting at random (seeded)
# in epoch 0 (airbench's derandomised flips; the loop gives each image's flip).
AUGMENTATIONS = ("crop", "flip", "cutout", "rotate", "scale", "alternating_flip")


def parse_augment(spec: str) -> tuple[str, ...]:
  """'crop,flip' -> ('crop', 'flip'); '' or 'none' -> ()."""
  ops = tuple(s.strip() for s in spec.split(",") if s.strip() and s.strip() != "none")
  unknown = [op for op in ops if op not in AUGMENTATIONS]
  if unknown:
    raise errors.ConfigError(f"config.augment: unknown op(s) {unknown}; choose from "
                     f"{list(AUGMENTATIONS)}, comma-separated, or 'none'.")
  return ops


def normalize(images: jax.Array, mean: Sequence[float], std: Sequence[float],
              dtype: jnp.dtype | str = jnp.float32) -> jax.Array:
  """uint8 [0, 255] -> ((x / 255) - mean) / std in `dtype`, per channel; float input is
  taken as already scaled: (x - mean) / std. Computed in `dtype` from the start: uint8
  values are exact in bfloat16."""
  if not len(mean) or not len(std):   # would broadcast the channels away
    raise ValueError("normalize needs a mean and std per channel: build the step from a "
                     "config whose normalisation is filled in (research/normalization.py).")
  x = images.astype(dtype)
  if images.dtype == jnp.uint8:  # static under jit: the dtype is part of the trace
    x = x / 255.0
  return (x - jnp.asarray(mean, dtype)) / jnp.asarray(std, dtype)


def random_crop(key: jax.Array, images: jax.Array, padding: int,
                fill: str = "zero") -> jax.Array:
  """Pads each image with zeros (the mean, after normalisation), or with its mirror
  image (fill='reflect'), and crops it back at a random offset: a translation by up to
  `padding` pixels. An axis of length 1 (the W of MNIST-1D's (40, 1) sequences) is not
  translated, or most crops would be all padding."""
  n, h, w, c = images.shape
  pad_h, pad_w = (padding if h > 1 else 0), (padding if w > 1 else 0)
  padded = jnp.pad(images, ((0, 0), (pad_h, pad_h), (pad_w, pad_w), (0, 0)),
                   mode="reflect" if fill == "reflect" else "constant")
  # Drawn as for 2-D images, then clipped, so 2-D crops do not change.
  offsets = jnp.minimum(jax.random.randint(key, (n, 2), 0, 2 * padding + 1),
                        jnp.array([2 * pad_h, 2 * pad_w]))

  def crop_one(image, offset):
    return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))

  return jax.vmap(crop_one)(padded, offsets)


def random_flip(key: jax.Array, images: jax.Array) -> jax.Array:
  return flip_where(jax.random.bernoulli(key, 0.5, (images.shape[0],)), images)


def flip_where(flip: jax.Array, images: jax.Array) -> jax.Array:
  """Mirrors left-right the images whose entry of `flip` (N,) is true."""
  return jnp.where(flip[:, None, None, None], images[:, :, ::-1, :], images)


def alternating_flips(key: jax.Array, size: int, epoch: jax.Array) -> jax.Array:
  """Whether each of `size` training images is mirrored in `epoch`: at random (from
  `key` alone) in even epochs, the opposite in odd ones, so every image is seen both
  ways equally often."""
  return jax.random.bernoulli(key, 0.5, (size,)) ^ (epoch % 2 == 1)


def test_time_views(images: jax.Array, mode: str) -> list[tuple[float, jax.Array]]:
  """(weight, images) of each test-time view, the weights summing to 1. flip: the
  images and their mirrors; flip_translate (airbench's): those at 1/4 each, and at 1/8
  each, the 1-pixel shifts up-left and down-right (reflect-padded) and their mirrors."""
  if mode == "none":
    return [(1.0, images)]
  mirrored = [images, images[:, :, ::-1, :]]
  if mode == "flip":
    return [(0.5, view) for view in mirrored]
  h, w = images.shape[1:3]
  padded = jnp.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
  shifted = [padded[:, :h, :w], padded[:, 2:, 2:]]
  shifted += [view[:, :, ::-1, :] for view in shifted]
  return [(0.25, view) for view in mirrored] + [(0.125, view) for view in shifted]


def cutout(key: jax.Array, images: jax.Array, size: int) -> jax.Array:
  """DeVries & Taylor 2017: zeroes (the mean, after normalisation) one size x size square
  per image, at a random position inside the image, all channels."""
  n, h, w, _ = images.shape
  if size > min(h, w):
    raise errors.ConfigError(f"config.cutout_size={size} is larger than the {h}x{w} images.")
  corners = jax.random.randint(key, (n, 2), 0, jnp.array([h - size + 1, w - size + 1]))
  rows = jnp.arange(h)[None, :] - corners[:, :1]   # (n, h): offset from the square's top
  cols = jnp.arange(w)[None, :] - corners[:, 1:]
  inside = (((rows >= 0) & (rows < size))[:, :, None]
            & ((cols >= 0) & (cols < size))[:, None, :])
  return jnp.where(inside[..., None], 0.0, images)


def affine_resample(images: jax.Array, angles: jax.Array, scales: jax.Array) -> jax.Array:
  """Rotates each image by its angle (radians, counter-clockwise as displayed) and scales
  it by its factor (> 1 zooms in), about the image's centre, by bilinear interpolation
  (map_coordinates, order 1). Pixels that come from outside the image are 0, the mean
  after normalisation, as crop pads and cutout fills: edge or reflect filling would
  invent structure (smeared or mirrored objects) that the test images never show."""
  _, h, w, _ = images.shape
  centre = jnp.array([(h - 1) / 2, (w - 1) / 2], jnp.float32)
  rows, cols = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) - centre[0],
                            jnp.arange(w, dtype=jnp.float32) - centre[1], indexing="ij")

  def resample_one(image, angle, scale):
    # The output pixel at `offset` from the centre reads the input at R(-angle) offset /
    # scale (rows point down, so a counter-clockwise turn flips the sine's sign).
    cos, sin = jnp.cos(angle) / scale, jnp.sin(angle) / scale
    source = (cos * rows + sin * cols + centre[0], cos * cols - sin * rows + centre[1])

    def resample_channel(plane):
      return ndimage.map_coordinates(plane, source, order=1, mode="constant", cval=0.0)

    planes = jax.vmap(resample_channel, in_axes=-1, out_axes=-1)
    return planes(image.astype(jnp.float32)).astype(image.dtype)

  return jax.vmap(resample_one)(images, angles, scales)


def random_rotate_scale(key: jax.Array, images: jax.Array, max_degrees: float,
                        scale_range: Sequence[float]) -> jax.Array:
  """Each image rotated by a uniform angle in [-max_degrees, max_degrees] and scaled by a
  uniform factor in scale_range, in one resampling (one interpolation's blur, not two)."""
  angle_key, scale_key = jax.random.split(key)
  n = images.shape[0]
  degrees = jax.random.uniform(angle_key, (n,), minval=-max_degrees, maxval=max_degrees)
  scales = jax.random.uniform(scale_key, (n,), minval=scale_range[0],
                              maxval=scale_range[1])
  return affine_resample(images, jnp.deg2rad(degrees), scales)


def augment(key: jax.Array, images: jax.Array, ops: tuple[str, ...],
            crop_padding: int, cutout_size: int = 8, rotate_degrees: float = 0.0,
            scale_range: Sequence[float] = (1.0, 1.0), crop_fill: str = "zero",
            flips: jax.Array | None = None) -> jax.Array:
  """`flips`: for alternating_flip, whether each image is mirrored (alternating_flips)."""
  crop_key, flip_key = jax.random.split(key)
  # Rotate and scale go first, on the whole image. Their key is folded in (as cutout's
  # is), so that crop, flip and cutout draw exactly as before they existed.
  if "rotate" in ops or "scale" in ops:
    images = random_rotate_scale(jax.random.fold_in(key, 3), images,
                                 rotate_degrees if "rotate" in ops else 0.0,
                                 scale_range if "scale" in ops else (1.0, 1.0))
  if "crop" in ops and crop_padding > 0:
    images = random_crop(crop_key, images, crop_padding, crop_fill)
  if "flip" in ops:
    images = random_flip(flip_key, images)
  if "alternating_flip" in ops:
    images = flip_where(flips, images)
  if "cutout" in ops:  # folded in, so crop and flip draw exactly as before cutout existed
    images = cutout(jax.random.fold_in(key, 2), images, cutout_size)
  return images
