"""Images as people have them, in the image-folder layout: `train/<class>/<image>` and
`test/<class>/<image>`.

`decode_image` turns one file of any size and mode (grayscale, RGB, RGBA, palette, 16-bit,
EXIF-rotated) into uint8 pixels of the size and channels asked for. Class names are the
folder names, sorted, so that label ids do not depend on the order in which a file system or
an archive lists them. Every file in a class folder is decoded by its content, not its name,
so that a file PIL cannot read (a .heic, a README) is named rather than silently left out.
The collector below is shared by the directory reader here and the archive readers in
`archives.py`."""

from __future__ import annotations

import collections
import dataclasses
import io
import os
import pathlib

import numpy as np
from PIL import Image, ImageOps

from research.data.types import CorruptDataError, Decoded, Split

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
SPLITS = ("train", "test")
CHANNELS = (1, 3)
ON_BAD_IMAGE = ("error", "skip")
# Files that operating systems drop into folders; never images, never worth a warning.
_SYSTEM_FILES = {"thumbs.db", "desktop.ini", "icon\r"}
# Larger JPEGs are decoded at a reduced scale (libjpeg's 1/2, 1/4 or 1/8 DCT scaling,
# PIL's `draft`) when a target size is set: a 48-megapixel phone photo then needs a few MB
# instead of 144 MB, and the antialiased resize that follows sees the same content.
DRAFT_ABOVE_PIXELS = 4096 * 4096
_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_SIXTEEN_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}
_WHITE = (255, 255, 255, 255)


def is_image_name(name: str) -> bool:
  base = name.rsplit("/", 1)[-1]
  # macOS archives carry "._foo.png" resource forks next to every file; they are not images.
  return base.lower().endswith(IMAGE_EXTENSIONS) and not base.startswith(".")


def is_class_member(name: str) -> bool:
  """Whether a file inside a class folder is meant as one of its images: any file except
  hidden ones (macOS archives carry "._foo.png" resource forks next to every file) and
  the operating systems' own."""
  base = name.rsplit("/", 1)[-1]
  return not base.startswith(".") and base.lower() not in _SYSTEM_FILES


def decode_image(data: bytes, where: str, *, size: tuple[int, int] | None = None,
                 channels: int | None = None) -> np.ndarray:
  """Bytes of an image file -> (H, W, C) uint8, upright (EXIF orientation applied).

  size: (height, width) to resize to with PIL's antialiased bilinear filter (what
    torchvision's Resize does to PIL images), or None to keep the image's own size.
  channels: 1 (luma) or 3 (RGB), or None for what the file holds (1 for grayscale and
    16-bit, else 3). Transparent pixels are composited on white; 16-bit is scaled to 8.
  Raises CorruptDataError naming `where` for anything PIL cannot decode.
  """
  try:
    with Image.open(io.BytesIO(data)) as image:
      if size is not None:
        _draft_if_large(image, size)
      # load() forces the full decode so that a truncated file fails here, naming the file,
      # rather than later as an all-black image.
      image.load()
      ImageOps.exif_transpose(image, in_place=True)
      pixels = _pixels(_resize(_to_channels(image, channels), size))
  except Image.UnidentifiedImageError as e:
    raise CorruptDataError(f"cannot decode image {where}: not in a format PIL reads (PNG, "
                           f"JPEG, BMP, GIF, TIFF, WebP...; convert e.g. HEIC to JPEG)") from e
  except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for bad data
    raise CorruptDataError(f"cannot decode image {where}: {type(e).__name__}: {e}") from e
  return pixels


def fit_images(images: np.ndarray, size: tuple[int, int] | None,
               channels: int | None) -> np.ndarray:
  """(N, H, W, C) uint8 from the readers that produce whole arrays (IDX, CIFAR, tfds),
  resized and converted as `decode_image` does files; returned as is when they fit."""
  fits = ((size is None or images.shape[1:3] == tuple(size))
          and (channels is None or images.shape[3] == channels))
  if fits:
    return images
  return np.stack([_pixels(_resize(_to_channels(_image_of(x), channels), size))
                   for x in images])


def _image_of(pixels: np.ndarray) -> Image.Image:
  return Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)


def _resize(image: Image.Image, size: tuple[int, int] | None) -> Image.Image:
  """PIL's bilinear filter widens its support with the scale factor when shrinking, so it
  antialiases: torchvision's Resize(antialias=True) calls exactly this on PIL images."""
  if size is None or image.size == (size[1], size[0]):
    return image
  return image.resize((size[1], size[0]), Image.Resampling.BILINEAR)


def _pixels(image: Image.Image) -> np.ndarray:
  pixels = np.asarray(image, dtype=np.uint8)
  return pixels[:, :, None] if pixels.ndim == 2 else pixels


def _draft_if_large(image: Image.Image, size: tuple[int, int]) -> None:
  """Asks a large JPEG to decode at the smallest DCT scale that still covers `size` on
  both sides (either orientation, since EXIF rotation comes after)."""
  width, height = image.size
  if image.format == "JPEG" and width * height > DRAFT_ABOVE_PIXELS:
    side = max(size)
    image.draft(None, (side, side))


def _to_channels(image: Image.Image, channels: int | None) -> Image.Image:
  """An 8-bit "L" or "RGB" image with the requested number of channels."""
  gray = image.mode in _GRAY_MODES
  if image.mode in _SIXTEEN_BIT_MODES:
    # PIL's own conversion clips 16-bit values at 255; scale the full range instead.
    wide = np.asarray(image, dtype=np.float64)
    image = Image.fromarray(np.clip(np.round(wide / 257.0), 0, 255).astype(np.uint8), "L")
  elif _has_alpha(image):
    # The colour under a transparent pixel is whatever the encoder left (often black);
    # compositing on white gives the image as a viewer shows it.
    image = Image.alpha_composite(Image.new("RGBA", image.size, _WHITE), image.convert("RGBA"))
  want = channels or (1 if gray else 3)
  mode = "L" if want == 1 else "RGB"
  return image if image.mode == mode else image.convert(mode)


def _has_alpha(image: Image.Image) -> bool:
  return image.mode in ("RGBA", "RGBa", "LA", "La", "PA") or (
      image.mode == "P" and "transparency" in image.info)


@dataclasses.dataclass(frozen=True)
class ImageOptions:
  """How the image readers turn files into pixels: config.image_size, config.channels and
  config.on_bad_image. `key` goes into the decode cache's key, so a decode made with other
  options is never reused."""
  size: tuple[int, int] | None = None    # (height, width); None = as stored
  channels: int | None = None            # 1 or 3; None = as the data holds
  on_bad_image: str = "error"            # error | skip

  def __post_init__(self):
    if self.size is not None and (len(self.size) != 2 or min(self.size) < 1):
      raise ValueError(f"size={self.size!r} must be (height, width), both >= 1")
    if self.channels not in (None, *CHANNELS):
      raise ValueError(f"channels={self.channels!r} must be None, 1 or 3")
    if self.on_bad_image not in ON_BAD_IMAGE:
      raise ValueError(f"on_bad_image={self.on_bad_image!r} must be one of {ON_BAD_IMAGE}")

  @property
  def key(self) -> str:
    return f"size={self.size} channels={self.channels} on_bad_image={self.on_bad_image}"


class ImageCollector:
  """Decodes images as a reader hands them over, per split and class, then stacks them into
  Splits. Files that fail to decode are refused, or with on_bad_image='skip' recorded in
  `skipped` and left out."""

  def __init__(self, source: str, options: ImageOptions = ImageOptions()):
    self.source = source
    self.options = options
    self.images = {split: [] for split in SPLITS}
    self.classes = {split: [] for split in SPLITS}
    self._skipped = collections.defaultdict(list)  # (split, class) -> files left out
    self._shape = None  # (H, W) of the first image: every image must match it
    self._first = None

  def add(self, split: str, class_name: str, data: bytes, where: str) -> None:
    try:
      pixels = decode_image(data, where, size=self.options.size,
                            channels=self.options.channels)
    except CorruptDataError as e:
      if self.options.on_bad_image == "error":
        raise CorruptDataError(f"{e}; remove the file, or set --config.on_bad_image=skip "
                               f"to leave bad files out") from e
      self._skipped[split, class_name].append(where)
      return
    self._check_size(pixels, where)
    self.images[split].append(pixels)
    self.classes[split].append(class_name)

  def _check_size(self, pixels: np.ndarray, where: str) -> None:
    if self._shape is None:
      self._shape, self._first = pixels.shape[:2], where
    elif pixels.shape[:2] != self._shape:
      raise CorruptDataError(
          f"image {where} is {pixels.shape[1]}x{pixels.shape[0]} (WxH) but {self._first} is "
          f"{self._shape[1]}x{self._shape[0]}: every image in a dataset must have the same size; "
          f"set --config.image_size='(height, width)' to resize them on load")

  def finish(self) -> Decoded:
    layout = "expected <split>/<class>/<image> with splits train/ and test/"
    self._check_no_class_emptied()
    for split in SPLITS:
      if not self.images[split]:
        raise CorruptDataError(f"no images found for split '{split}' in {self.source} ({layout})")
    class_names = tuple(sorted(set(self.classes["train"])))
    unknown = sorted(set(self.classes["test"]) - set(class_names))
    if unknown:
      raise CorruptDataError(f"{self.source}: test/ has classes {unknown} that train/ lacks")
    label_of = {name: i for i, name in enumerate(class_names)}
    channels = max(image.shape[2] for split in SPLITS for image in self.images[split])
    splits = {}
    for split in SPLITS:
      images = self.images[split]
      if channels == 3:
        # A few grayscale files inside a colour dataset are common (ImageNet has some):
        # promote them rather than fail.
        images = [np.repeat(x, 3, axis=2) if x.shape[2] == 1 else x for x in images]
      splits[split] = Split(np.stack(images),
                            np.array([label_of[c] for c in self.classes[split]], np.int32))
    return Decoded(splits["train"], splits["test"], class_names, self.skipped)

  @property
  def skipped(self) -> tuple[str, ...]:
    return tuple(where for files in self._skipped.values() for where in files)

  def _check_no_class_emptied(self) -> None:
    """A class whose every file was skipped would silently vanish from the labels."""
    for (split, class_name), files in self._skipped.items():
      if class_name not in self.classes[split]:
        raise CorruptDataError(
            f"{self.source}: every file of class '{class_name}' in {split}/ failed to decode, "
            f"so the class would be empty ({len(files)} skipped: {', '.join(files)})")


def find_tree_root(path: pathlib.Path) -> pathlib.Path | None:
  """`path` itself if it holds train/, else its only subfolder that does (one level down:
  archives often unpack to `name/train/...`)."""
  if (path / "train").is_dir():
    return path
  subdirs = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
  if len(subdirs) == 1 and (subdirs[0] / "train").is_dir():
    return subdirs[0]
  return None


def image_files(root: pathlib.Path) -> list[tuple[str, str, pathlib.Path]]:
  """(split, class, path) of every file under root/<split>/<class>/, in sorted order."""
  found = []
  for split in SPLITS:
    split_dir = root / split
    if not split_dir.is_dir():
      continue
    for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
      with os.scandir(class_dir) as entries:
        names = sorted(e.name for e in entries if e.is_file() and is_class_member(e.name))
      found += [(split, class_dir.name, class_dir / name) for name in names]
  return found


def read_image_folder(root: pathlib.Path, options: ImageOptions = ImageOptions()) -> Decoded:
  collector = ImageCollector(str(root), options)
  for split, class_name, path in image_files(root):
    try:
      data = path.read_bytes()
    except OSError as e:
      raise CorruptDataError(f"cannot read image {path}: {e}") from e
    collector.add(split, class_name, data, str(path))
  return collector.finish()
