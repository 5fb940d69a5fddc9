"""Tiny datasets written in the exact on-disk formats the readers accept, for tests.

The real distributions are not shipped with the project (see ../shared/datasets/README.md),
so every reader is tested against files produced here, byte for byte in the published
layout: the IDX header, the CIFAR pickle dicts with bytes keys, the CIFAR binary records."""

from __future__ import annotations

import gzip
import io
import pathlib
import pickle
import tarfile
import zipfile

import numpy as np
from PIL import Image


def make_arrays(classes: int = 3, per_class: int = 4, shape=(8, 8, 1),
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Random uint8 images and int32 labels, sorted by class like the real archives."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (classes * per_class, *shape), dtype=np.uint8)
  labels = np.repeat(np.arange(classes, dtype=np.int32), per_class)
  return images, labels


def write_image_tree(root: pathlib.Path, splits: dict, class_names, ext: str = "png",
                     quality: int = 95) -> pathlib.Path:
  """splits: split name -> (images, labels); writes root/<split>/<class>/<nnnn>.<ext>."""
  for split, (images, labels) in splits.items():
    for i, (image, label) in enumerate(zip(images, labels)):
      folder = root / split / class_names[label]
      folder.mkdir(parents=True, exist_ok=True)
      pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
      kwargs = {"quality": quality} if ext in ("jpg", "jpeg") else {}
      pil.save(folder / f"{i:04d}.{ext}", **kwargs)
  return root


def write_tar(source: pathlib.Path, archive: pathlib.Path, prefix: str = "",
              mode: str = "w:xz") -> pathlib.Path:
  """Archives the files under `source`, sorted (as the shared archives are), each under
  `prefix/` when given."""
  with tarfile.open(archive, mode) as tar:
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
      rel = path.relative_to(source).as_posix()
      tar.add(path, arcname=f"{prefix}/{rel}" if prefix else rel, recursive=False)
  return archive


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def idx_bytes(array: np.ndarray) -> bytes:
  """IDX: 0x00 0x00, type 0x08 (ubyte), ndim, big-endian uint32 dims, raw bytes."""
  header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, ">u4").tobytes()
  return header + np.ascontiguousarray(array, np.uint8).tobytes()


def write_idx_set(folder: pathlib.Path, train, test, compress: bool = False,
                  dotted: bool = False) -> pathlib.Path:
  """The four MNIST files; train/test are (images (N, H, W, 1), labels)."""
  folder.mkdir(parents=True, exist_ok=True)
  sep = "." if dotted else "-"
  for prefix, (images, labels) in (("train", train), ("t10k", test)):
    for kind, array, n in (("images", images[..., 0], 3), ("labels", labels, 1)):
      data = idx_bytes(array.astype(np.uint8))
      name = f"{prefix}-{kind}{sep}idx{n}-ubyte"
      if compress:
        data, name = gzip.compress(data), name + ".gz"
      (folder / name).write_bytes(data)
  return folder


def _chw_rows(images: np.ndarray) -> np.ndarray:
  return images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # HWC -> CHW, flattened


def cifar10_pickle_files(train_batches, test, class_names) -> dict[str, bytes]:
  """File name -> bytes, as in cifar-10-batches-py/ (bytes keys, as Python 2 wrote them)."""
  files = {}
  for i, (images, labels) in enumerate(train_batches, 1):
    files[f"data_batch_{i}"] = pickle.dumps(
        {b"batch_label": f"training batch {i} of {len(train_batches)}".encode(),
         b"labels": [int(x) for x in labels], b"data": _chw_rows(images),
         b"filenames": [f"img_{j}.png".encode() for j in range(len(labels))]}, protocol=2)
  files["test_batch"] = pickle.dumps(
      {b"batch_label": b"testing batch 1 of 1", b"labels": [int(x) for x in test[1]],
       b"data": _chw_rows(test[0]), b"filenames": []}, protocol=2)
  files["batches.meta"] = pickle.dumps(
      {b"num_cases_per_batch": len(train_batches[0][1]),
       b"label_names": [n.encode() for n in class_names], b"num_vis": 3072}, protocol=2)
  return files


def cifar100_pickle_files(train, test, fine_names) -> dict[str, bytes]:
  """File name -> bytes, as in cifar-100-python/ (fine and coarse labels)."""
  def batch(images, labels):
    return pickle.dumps({b"filenames": [], b"batch_label": b"",
                         b"fine_labels": [int(x) for x in labels],
                         b"coarse_labels": [int(x) // 5 for x in labels],
                         b"data": _chw_rows(images)}, protocol=2)
  return {"train": batch(*train), "test": batch(*test),
          "meta": pickle.dumps({b"fine_label_names": [n.encode() for n in fine_names],
                                b"coarse_label_names": [b"coarse"]}, protocol=2)}


def cifar_binary_files(train_batches, test, class_names,
                       cifar100: bool = False) -> dict[str, bytes]:
  """File name -> bytes, as in cifar-10-batches-bin/ (or cifar-100-binary/ with
  cifar100=True: one train.bin, and a coarse label byte before the fine one)."""
  def records(images, labels):
    label_cols = [labels // 5, labels] if cifar100 else [labels]
    return np.column_stack(label_cols + [_chw_rows(images)]).astype(np.uint8).tobytes()
  names = "\n".join(class_names) + "\n"
  if cifar100:
    return {"train.bin": records(*train_batches[0]), "test.bin": records(*test),
            "fine_label_names.txt": names.encode(), "coarse_label_names.txt": b"coarse\n"}
  files = {f"data_batch_{i}.bin": records(*b) for i, b in enumerate(train_batches, 1)}
  files["test_batch.bin"] = records(*test)
  files["batches.meta.txt"] = names.encode()
  return files


def write_files(folder: pathlib.Path, files: dict[str, bytes]) -> pathlib.Path:
  folder.mkdir(parents=True, exist_ok=True)
  for name, data in files.items():
    (folder / name).write_bytes(data)
  return folder


def write_tar_of_files(archive: pathlib.Path, folder_name: str, files: dict[str, bytes],
                       mode: str = "w:gz") -> pathlib.Path:
  """Like cifar-10-python.tar.gz: every file under one top-level folder."""
  with tarfile.open(archive, mode) as tar:
    for name, data in files.items():
      add_bytes(tar, f"{folder_name}/{name}", data)
  return archive


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, fmt, **kwargs)
  return buffer.getvalue()


def rotated_jpeg(width: int = 20, height: int = 10) -> bytes:
  """A JPEG stored left red / right blue, with EXIF Orientation 6 (the camera was turned
  90 degrees clockwise): shown upright, it is `height` wide, red on top, blue below."""
  pixels = np.zeros((height, width, 3), np.uint8)
  pixels[:, :width // 2, 0] = 255
  pixels[:, width // 2:, 2] = 255
  exif = Image.Exif()
  exif[0x0112] = 6  # Orientation
  return encode(Image.fromarray(pixels), "JPEG", quality=95, exif=exif)


def mixed_mode_images(seed: int = 0) -> dict[str, bytes]:
  """File name -> bytes: one image per mode people's folders hold (grayscale, RGB, RGBA,
  palette with transparency, LA, 16-bit, grayscale JPEG, EXIF-rotated JPEG), each of a
  different size."""
  rng = np.random.default_rng(seed)
  def noise(height, width, *channels):
    return rng.integers(0, 256, (height, width, *channels), dtype=np.uint8)
  rgba = noise(9, 13, 4)
  rgba[0, 0, 3] = 0  # one transparent pixel
  palette = Image.fromarray(noise(7, 5, 3)).convert("P", palette=Image.Palette.ADAPTIVE)
  palette.info["transparency"] = 0
  sixteen = rng.integers(0, 65536, (12, 10), dtype=np.uint16)
  return {
      "gray.png": encode(Image.fromarray(noise(6, 8))),
      "rgb.png": encode(Image.fromarray(noise(16, 12, 3))),
      "rgba.png": encode(Image.fromarray(rgba, "RGBA")),
      "palette.png": encode(palette),
      "la.png": encode(Image.fromarray(noise(11, 4, 2), "LA")),
      "sixteen.png": encode(Image.fromarray(sixteen)),
      "gray.jpg": encode(Image.fromarray(noise(20, 30)), "JPEG"),
      "rotated.jpg": rotated_jpeg(),
      "rgb.bmp": encode(Image.fromarray(noise(5, 5, 3)), "BMP"),
  }


def write_zip(source: pathlib.Path, archive: pathlib.Path, prefix: str = "",
              macos_metadata: bool = False) -> pathlib.Path:
  """Zips the files under `source` as people share image datasets; macos_metadata adds the
  __MACOSX/ resource forks that Finder puts beside every file."""
  with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zip_file:
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
      rel = path.relative_to(source).as_posix()
      name = f"{prefix}/{rel}" if prefix else rel
      zip_file.write(path, name)
      if macos_metadata:
        folder, _, base = name.rpartition("/")
        zip_file.writestr(f"__MACOSX/{folder}/._{base}", b"\x00\x05\x16\x07 not an image")
  return archive
