"""The image-folder layout: `train/<class>/<image>` and `test/<class>/<image>`.

Class names are the folder names, sorted, so that label ids do not depend on the order in
which a file system or an archive lists them. The collector below is shared by the directory
reader here and the streaming tar reader in `archives.py`."""

from __future__ import annotations

import io
import os
import pathlib

import numpy as np
from PIL import Image, ImageOps

from research.data.types import CorruptDataError, Decoded, Split

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
SPLITS = ("train", "test")
CHANNELS = (1, 3)
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
      image = ImageOps.exif_transpose(image)
      image = _to_channels(image, channels)
      if size is not None and image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
      pixels = np.asarray(image, dtype=np.uint8)
  except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for bad data
    raise CorruptDataError(f"cannot decode image {where}: {type(e).__name__}: {e}") from e
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


class ImageCollector:
  """Accumulates decoded images per split and class, then stacks them into Splits."""

  def __init__(self, source: str):
    self.source = source
    self.images = {split: [] for split in SPLITS}
    self.classes = {split: [] for split in SPLITS}
    self.where = {split: [] for split in SPLITS}
    self._shape = None  # (H, W) of the first image: every image must match it
    self._first = None

  def add(self, split: str, class_name: str, data: bytes, where: str) -> None:
    pixels = decode_image(data, where)
    if self._shape is None:
      self._shape, self._first = pixels.shape[:2], where
    elif pixels.shape[:2] != self._shape:
      raise CorruptDataError(
          f"image {where} is {pixels.shape[1]}x{pixels.shape[0]} (WxH) but {self._first} is "
          f"{self._shape[1]}x{self._shape[0]}: every image in a dataset must have the same size; "
          f"resize the images or remove the odd one out")
    self.images[split].append(pixels)
    self.classes[split].append(class_name)
    self.where[split].append(where)

  def finish(self) -> Decoded:
    layout = "expected <split>/<class>/<image>.png|jpg|jpeg|bmp with splits train/ and test/"
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
    return Decoded(splits["train"], splits["test"], class_names)


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
  """(split, class, path) of every image under root/train and root/test, in sorted order."""
  found = []
  for split in SPLITS:
    split_dir = root / split
    if not split_dir.is_dir():
      continue
    for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
      for name in sorted(os.listdir(class_dir)):
        if is_image_name(name):
          found.append((split, class_dir.name, class_dir / name))
  return found


def read_image_folder(root: pathlib.Path) -> Decoded:
  collector = ImageCollector(str(root))
  for split, class_name, path in image_files(root):
    try:
      data = path.read_bytes()
    except OSError as e:
      raise CorruptDataError(f"cannot read image {path}: {e}") from e
    collector.add(split, class_name, data, str(path))
  return collector.finish()
