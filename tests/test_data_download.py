"""Downloading the original distributions (research/data/download.py), against a local HTTP
server in a thread that serves tiny files in the exact published formats: a CIFAR-10
python tarball and the four MNIST IDX .gz files."""

import contextlib
import hashlib
import http.server
import socket
import threading
import time

import numpy as np
import pytest

from experiments import cifar_cnn
from research import configs
from research import errors
from research.data import DataNotFoundError, download, load_dataset, tfds_source
from research.training import inputs
import synthetic_data as syn

CIFAR_NAMES = tuple(f"class{i}" for i in range(10))


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
  monkeypatch.setenv("RESEARCH_CACHE_DIR", str(tmp_path / "cache"))
  monkeypatch.delenv("RESEARCH_DATA_DIR", raising=False)


def _splits(channels: int):
  shape = (32, 32, 3) if channels == 3 else (28, 28, 1)
  return syn.make_arrays(10, 2, shape, seed=0), syn.make_arrays(10, 1, shape, seed=1)


def _published_files(name: str, tmp_path) -> tuple[dict[str, bytes], tuple]:
  """{file name: bytes} as the original distribution of `name` names them, and the
  (train, test) arrays they hold."""
  if name == "cifar10":
    train, test = _splits(3)
    archive = syn.write_tar_of_files(tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py",
                                     syn.cifar10_pickle_files([train], test, CIFAR_NAMES))
    return {archive.name: archive.read_bytes()}, (train, test)
  train, test = _splits(1)
  folder = syn.write_idx_set(tmp_path / "idx", train, test, compress=True)
  return {p.name: p.read_bytes() for p in folder.iterdir()}, (train, test)


def _md5s(files: dict[str, bytes]) -> dict[str, str]:
  return {name: hashlib.md5(data).hexdigest() for name, data in files.items()}


@contextlib.contextmanager
def serving(files: dict[str, bytes], cut_short: frozenset = frozenset()):
  """An HTTP server on localhost serving `files` (URL path -> bytes). Paths in `cut_short`
  announce their full Content-Length, send half of it and close the connection."""

  class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
      data = files.get(self.path)
      if data is None:
        self.send_error(404)
        return
      self.send_response(200)
      self.send_header("Content-Length", str(len(data)))
      self.end_headers()
      self.wfile.write(data[:len(data) // 2] if self.path in cut_short else data)
      self.close_connection = self.path in cut_short

    def log_message(self, *args):
      pass

  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
  thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
  thread.start()
  try:
    yield f"http://127.0.0.1:{server.server_port}"
  finally:
    server.shutdown()
    server.server_close()


def _dead_url() -> str:
  """A local URL where nothing listens: connections are refused at once."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  return f"http://127.0.0.1:{port}/"


def _leftovers(name: str) -> list[str]:
  directory = download.folder(name)
  return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


@pytest.mark.parametrize("name", ["cifar10", "mnist"])
def test_download_loads_then_reuses_the_cache(name, tmp_path, monkeypatch):
  files, (train, test) = _published_files(name, tmp_path)
  dead = _dead_url()
  with serving({f"/{name}/{f}": data for f, data in files.items()}) as url:
    remote = download.Remote(mirrors=(dead, f"{url}/{name}/"), md5=_md5s(files))
    first = load_dataset(name, source="download", remote=remote, validation_size=2)
  assert _leftovers(name) == sorted(files)  # the files, and no temporary one
  assert str(download.folder(name)) in first.source
  held_out = np.concatenate([first.train.labels, first.validation.labels])
  np.testing.assert_array_equal(np.sort(held_out), np.sort(train[1]))
  assert first.test.images.shape == test[0].shape and first.test.images.dtype == np.uint8
  np.testing.assert_array_equal(first.test.images, test[0])
  np.testing.assert_array_equal(first.test.labels, test[1])
  if name == "cifar10":
    assert first.class_names == CIFAR_NAMES
  # The server is gone: the second load reads the verified download, without the network,
  # and (source auto) before asking tensorflow-datasets, which could download it again.
  def no_tfds(*args):
    raise AssertionError("tfds was asked before the earlier download")
  monkeypatch.setattr(tfds_source, "installed", lambda: True)
  monkeypatch.setattr(tfds_source, "open_splits", no_tfds)
  again = load_dataset(name, remote=remote, validation_size=2)
  np.testing.assert_array_equal(again.train.images, first.train.images)
  np.testing.assert_array_equal(again.test.labels, first.test.labels)


def test_the_main_job_downloads_and_refuses_a_checksum_mismatch(tmp_path, monkeypatch):
  # experiments.cifar_cnn with no local copy and no tfds goes to the download (auto); the
  # mirror serves a file that is not the published one, so its md5 differs.
  monkeypatch.setattr(tfds_source, "installed", lambda: False)
  files, _ = _published_files("cifar10", tmp_path)
  with serving({f"/datasets/cifar10/{f}": data for f, data in files.items()}) as url:
    config = cifar_cnn.get_config()
    config.download_mirror = f"{url}/datasets"
    configs.validate(config)
    with pytest.raises(DataNotFoundError) as e:
      inputs.load_full(config)
  message = str(e.value)
  assert f"{url}/datasets/cifar10/cifar-10-python.tar.gz" in message
  assert "checksum mismatch" in message
  assert download.PUBLISHED_MD5["cifar10"]["cifar-10-python.tar.gz"] in message
  assert _md5s(files)["cifar-10-python.tar.gz"] in message
  assert _leftovers("cifar10") == []


def test_truncated_transfer_leaves_no_file(tmp_path):
  files, _ = _published_files("mnist", tmp_path)
  cut = "train-images-idx3-ubyte.gz"
  with serving({f"/{f}": data for f, data in files.items()},
               cut_short=frozenset({f"/{cut}"})) as url:
    remote = download.Remote(mirrors=(f"{url}/",), md5=_md5s(files))
    with pytest.raises(DataNotFoundError, match="cut short") as e:
      load_dataset("mnist", source="download", remote=remote)
  assert f"{url}/{cut}" in str(e.value)
  assert cut not in _leftovers("mnist") and not any(".part" in f for f in _leftovers("mnist"))
  assert download.cached("mnist", remote) is None


def test_server_down_fails_fast_and_says_how_to_supply_data(tmp_path, monkeypatch):
  monkeypatch.setattr(tfds_source, "installed", lambda: False)
  mirrors = (_dead_url(), _dead_url())
  start = time.perf_counter()
  with pytest.raises(DataNotFoundError) as e:
    load_dataset("mnist", remote=download.Remote(mirrors, download.PUBLISHED_MD5["mnist"]))
  assert time.perf_counter() - start < 3
  message = str(e.value)
  for mirror in mirrors:
    assert f"{mirror}train-images-idx3-ubyte.gz: cannot connect" in message
  assert "--config.data_dir" in message and "--config.download_mirror" in message
  assert _leftovers("mnist") == []


def test_mirror_setting(monkeypatch):
  monkeypatch.delenv("RESEARCH_DOWNLOAD_MIRROR")
  assert download.remote("cifar-10").mirrors == ("https://www.cs.toronto.edu/~kriz/",)
  assert download.remote("folder") is None
  remote = download.remote("mnist", "https://a.example/data, https://b.example/")
  assert remote.mirrors == ("https://a.example/data/mnist/", "https://b.example/mnist/")
  assert remote.md5 == download.PUBLISHED_MD5["mnist"]
  monkeypatch.setenv("RESEARCH_DOWNLOAD_MIRROR", "https://c.example")
  assert download.remote("fashion_mnist").mirrors == ("https://c.example/fashion_mnist/",)
  config = configs.base_config()
  config.download_mirror = "https://a.example/, ftp://b.example/"
  with pytest.raises(errors.ConfigError, match="config.download_mirror: 'ftp://b.example/'"):
    configs.validate(config)
