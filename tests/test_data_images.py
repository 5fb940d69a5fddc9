"""Images as people have them: mixed sizes and modes, EXIF rotation, bad files, huge JPEGs,
in folders, tar and zip archives (research/data/images.py, archives.py, loader.py)."""

import logging
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

import synthetic_data
from research import configs, errors
from research.data import CorruptDataError, DataError, formats, load_dataset
from research.data.images import decode_image

REPO = pathlib.Path(__file__).resolve().parent.parent
CLASSES = ("cat", "dog")


def _write_mixed_tree(root: pathlib.Path, extra: dict | None = None) -> pathlib.Path:
  """train/ and test/ with two classes, each holding one image of every mode and a
  different size; `extra` maps "split/class/name" to more files' bytes."""
  for s, split in enumerate(("train", "test")):
    for c, class_name in enumerate(CLASSES):
      folder = root / split / class_name
      synthetic_data.write_files(folder, synthetic_data.mixed_mode_images(seed=2 * s + c))
  for name, data in (extra or {}).items():
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_bytes(data)
  return root


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> pathlib.Path:
  monkeypatch.setenv("RESEARCH_CACHE_DIR", str(tmp_path / "cache"))
  return tmp_path / "cache"


@pytest.fixture
def mixed_tree(tmp_path, cache_dir) -> pathlib.Path:
  return _write_mixed_tree(tmp_path / "photos")


def _load(path, **kwargs):
  return load_dataset("folder", str(path), **kwargs)


# --- one file --------------------------------------------------------------------------

def test_transparent_pixels_are_composited_on_white():
  pixels = np.zeros((2, 2, 4), np.uint8)
  pixels[0, 0] = (255, 0, 0, 255)     # opaque red
  pixels[0, 1] = (255, 0, 0, 0)       # transparent (its red is invisible)
  pixels[1, 0] = (0, 0, 0, 128)       # half-transparent black
  data = synthetic_data.encode(Image.fromarray(pixels, "RGBA"))
  rgb = decode_image(data, "a.png").astype(int)
  assert rgb.shape == (2, 2, 3)
  np.testing.assert_array_equal(rgb[0, 0], (255, 0, 0))
  np.testing.assert_array_equal(rgb[0, 1], (255, 255, 255))
  np.testing.assert_allclose(rgb[1, 0], (127, 127, 127), atol=1)
  gray = decode_image(data, "a.png", channels=1)
  assert gray.shape == (2, 2, 1) and gray[0, 0, 0] == 76 and gray[0, 1, 0] == 255  # luma


def test_palette_transparency_and_la_are_composited_on_white():
  palette = Image.new("P", (3, 1))
  palette.putpalette([0, 0, 0, 10, 200, 30] + [0, 0, 0] * 254)
  palette.putdata([0, 1, 0])
  palette.info["transparency"] = 0
  rgb = decode_image(synthetic_data.encode(palette), "p.png")
  np.testing.assert_array_equal(rgb[0], [(255, 255, 255), (10, 200, 30), (255, 255, 255)])
  la = Image.fromarray(np.array([[[40, 255], [40, 0]]], np.uint8), "LA")
  gray = decode_image(synthetic_data.encode(la), "la.png")
  np.testing.assert_array_equal(gray[..., 0], [[40, 255]])


def test_sixteen_bit_is_scaled_not_clipped():
  values = np.array([[0, 257, 1000, 32896, 65535]], np.uint16)
  decoded = decode_image(synthetic_data.encode(Image.fromarray(values)), "depth.png")
  assert decoded.shape == (1, 5, 1)
  np.testing.assert_array_equal(decoded[0, :, 0], [0, 1, 4, 128, 255])


def test_channels_convert_both_ways():
  gray = synthetic_data.encode(Image.fromarray(np.full((3, 4), 99, np.uint8)))
  assert decode_image(gray, "g.png").shape == (3, 4, 1)
  np.testing.assert_array_equal(decode_image(gray, "g.png", channels=3), np.full((3, 4, 3), 99))
  rgb = synthetic_data.encode(Image.new("RGB", (4, 3), (0, 255, 0)))
  assert decode_image(rgb, "c.png", channels=1)[0, 0, 0] == 150  # 0.587 * 255


def test_exif_orientation_is_honoured():
  upright = decode_image(synthetic_data.rotated_jpeg(width=20, height=10), "phone.jpg")
  assert upright.shape == (20, 10, 3)  # stored 20 wide, 10 high; shown 10 wide, 20 high
  top, bottom = upright[2, 5].astype(int), upright[-3, 5].astype(int)
  assert top[0] > 200 and top[2] < 60, top        # red on top
  assert bottom[2] > 200 and bottom[0] < 60, bottom  # blue below


def test_resize_antialiases():
  """A one-pixel checkerboard shrunk 8x averages to grey; a filter without antialiasing
  (nearest, or bilinear on a fixed 2x2 support) keeps black and white."""
  board = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)
  small = decode_image(synthetic_data.encode(Image.fromarray(board)), "b.png", size=(8, 12))
  assert small.shape == (8, 12, 1)
  assert np.abs(small.astype(int) - 127.5).max() < 12


def test_not_an_image_names_the_file():
  with pytest.raises(CorruptDataError, match="notes.txt"):
    decode_image(b"shopping list", "train/cat/notes.txt")


# --- folders and archives --------------------------------------------------------------

def test_mixed_sizes_and_modes_load_at_image_size(mixed_tree):
  files = len(synthetic_data.mixed_mode_images())
  data = _load(mixed_tree, image_size=(8, 6), channels=3)
  assert data.train.images.shape == (2 * files, 8, 6, 3)
  assert data.test.images.shape == (2 * files, 8, 6, 3)
  assert data.class_names == CLASSES
  np.testing.assert_array_equal(np.bincount(data.train.labels), [files, files])
  gray = _load(mixed_tree, image_size=(5, 5), channels=1)
  assert gray.train.images.shape == (2 * files, 5, 5, 1)
  # channels taken from the data: colour wins, grayscale files are promoted.
  assert _load(mixed_tree, image_size=(4, 4)).train.images.shape[-1] == 3


def test_mixed_sizes_without_image_size_say_how_to_fix(mixed_tree):
  with pytest.raises(CorruptDataError, match=r"config\.image_size"):
    _load(mixed_tree)


@pytest.mark.parametrize("archive", ["photos.zip", "photos.tar.gz", "photos.tar.xz"])
def test_archives_decode_as_the_folder_does(mixed_tree, tmp_path, archive):
  path = tmp_path / archive
  if archive.endswith(".zip"):
    synthetic_data.write_zip(mixed_tree, path, prefix="photos", macos_metadata=True)
  else:
    synthetic_data.write_tar(mixed_tree, path, prefix="photos",
                             mode="w:gz" if archive.endswith("gz") else "w:xz")
  folder = _load(mixed_tree, image_size=(7, 9), cache=False)
  packed = _load(path, image_size=(7, 9), cache=False)
  np.testing.assert_array_equal(packed.train.images, folder.train.images)
  np.testing.assert_array_equal(packed.test.labels, folder.test.labels)
  assert packed.class_names == CLASSES


def test_zip_is_found_by_name_in_a_data_dir(mixed_tree, tmp_path):
  datasets = tmp_path / "datasets"
  datasets.mkdir()
  synthetic_data.write_zip(mixed_tree, datasets / "pets.zip")
  data = load_dataset("pets", str(datasets), image_size=(4, 4), cache=False)
  assert data.source.startswith(str(datasets / "pets.zip")) and "zip" in data.source


BAD = {"train/cat/truncated.jpg": synthetic_data.rotated_jpeg()[:300],
       "test/dog/notes.txt": b"not an image"}


@pytest.mark.parametrize("as_zip", [False, True])
def test_bad_files_are_refused_by_default_naming_the_file(tmp_path, cache_dir, as_zip):
  path = _write_mixed_tree(tmp_path / "photos", BAD)
  if as_zip:
    path = synthetic_data.write_zip(path, tmp_path / "photos.zip")
  with pytest.raises(CorruptDataError, match=r"(truncated\.jpg|notes\.txt).*on_bad_image=skip"):
    _load(path, image_size=(4, 4))


@pytest.mark.parametrize("as_zip", [False, True])
def test_bad_files_are_skipped_and_listed(tmp_path, cache_dir, caplog, as_zip):
  path = _write_mixed_tree(tmp_path / "photos", BAD)
  if as_zip:
    path = synthetic_data.write_zip(path, tmp_path / "photos.zip")
  files = len(synthetic_data.mixed_mode_images())
  for attempt in ("decoded", "cached"):  # the cached load warns as well
    caplog.clear()
    with caplog.at_level(logging.WARNING):
      data = _load(path, image_size=(4, 4), on_bad_image="skip")
    assert len(data.train) == 2 * files and len(data.test) == 2 * files, attempt
    warning = "\n".join(r.getMessage() for r in caplog.records)
    assert "skipped 2 files" in warning, attempt
    assert "truncated.jpg" in warning and "notes.txt" in warning, attempt
    assert "2 bad files skipped" in data.source


def test_a_class_left_empty_by_skipping_is_an_error(tmp_path, cache_dir):
  path = _write_mixed_tree(tmp_path / "photos", {"train/bird/a.jpg": b"x", "train/bird/b": b"y"})
  with pytest.raises(CorruptDataError, match=r"class 'bird'.*train/bird/a\.jpg"):
    _load(path, image_size=(4, 4), on_bad_image="skip")


def test_system_files_in_class_folders_are_ignored(tmp_path, cache_dir):
  path = _write_mixed_tree(tmp_path / "photos", {"train/cat/.DS_Store": b"\x00",
                                                 "train/cat/Thumbs.db": b"\x00"})
  assert len(_load(path, image_size=(4, 4)).train) == 2 * len(synthetic_data.mixed_mode_images())


# --- the cache ---------------------------------------------------------------------------

def test_cache_key_holds_the_image_options(mixed_tree, cache_dir, monkeypatch):
  assert _load(mixed_tree, image_size=(8, 8)).train.images.shape[1:3] == (8, 8)
  assert _load(mixed_tree, image_size=(4, 4)).train.images.shape[1:3] == (4, 4)
  assert len(list(cache_dir.glob("*.npz"))) == 2

  def no_decoding(*args, **kwargs):
    raise AssertionError("decoded again")
  monkeypatch.setattr(formats, "read", no_decoding)
  assert _load(mixed_tree, image_size=(8, 8)).train.images.shape[1:3] == (8, 8)  # a hit
  for other in ({"image_size": (6, 6)}, {"image_size": (8, 8), "channels": 1},
                {"image_size": (8, 8), "on_bad_image": "skip"}):
    with pytest.raises(AssertionError, match="decoded again"):
      _load(mixed_tree, **other)


# --- readers of whole arrays -------------------------------------------------------------

def test_idx_arrays_are_resized_and_converted_too(tmp_path, cache_dir):
  train = synthetic_data.make_arrays(2, 3, (8, 8, 1))
  test = synthetic_data.make_arrays(2, 1, (8, 8, 1), seed=1)
  folder = synthetic_data.write_idx_set(tmp_path / "mnist", train, test)
  data = load_dataset("mnist", str(folder), image_size=(4, 4), channels=3)
  assert data.train.images.shape == (6, 4, 4, 3)
  np.testing.assert_array_equal(data.train.images[..., 0], data.train.images[..., 2])


def test_mnist1d_refuses_image_options():
  with pytest.raises(DataError, match="image_size"):
    load_dataset("mnist1d", image_size=(4, 4))


# --- large photos ------------------------------------------------------------------------

_PEAK_SCRIPT = textwrap.dedent(r"""
    import re, sys
    import numpy as np
    from research.data.images import decode_image
    data = open(sys.argv[1], "rb").read()
    def peak_mb():  # this process's peak RSS (ru_maxrss would include the parent's)
      status = open("/proc/self/status").read()
      return int(re.search(r"VmHWM:\s*(\d+) kB", status).group(1)) / 1024
    before = peak_mb()
    drafted = decode_image(data, "big.jpg", size=(64, 64))
    after_draft = peak_mb()
    full = decode_image(data, "big.jpg")
    after_full = peak_mb()
    from PIL import Image
    reference = np.asarray(Image.fromarray(full).resize((64, 64), Image.Resampling.BILINEAR))
    error = np.abs(drafted.astype(int) - reference.astype(int)).mean()
    print(after_draft - before, after_full - before, error)
""")


@pytest.mark.skipif(not pathlib.Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_a_huge_jpeg_is_decoded_in_reduced_mode(tmp_path):
  """6000x4000 RGB is 72 MB decoded in full; drafted at 1/8 scale it is about 1 MB. The
  same process then decodes it in full, which shows the measurement can see the 72 MB."""
  small = synthetic_data.make_arrays(1, 1, (4, 6, 3))[0][0]
  path = tmp_path / "big.jpg"
  Image.fromarray(small).resize((6000, 4000), Image.Resampling.BILINEAR).save(path, quality=70)
  result = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(path)], cwd=REPO,
                          capture_output=True, text=True, check=True,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
  drafted_mb, full_mb, error = map(float, result.stdout.split())
  assert full_mb > 60, result.stdout
  assert drafted_mb < 20, result.stdout
  assert error < 4, result.stdout  # the drafted image shows the same content


# --- config ------------------------------------------------------------------------------

@pytest.mark.parametrize("key, value", [("image_size", (0, 8)), ("image_size", (8,)),
                                        ("image_size", (8, 8, 3)), ("channels", 2),
                                        ("on_bad_image", "ignore")])
def test_bad_image_config_names_the_key(key, value):
  config = configs.base_config()
  config[key] = value
  with pytest.raises(errors.ConfigError, match=f"config.{key}"):
    configs.validate(config)
