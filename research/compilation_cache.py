"""JAX's persistent compilation cache, on by default for runs.

Compiling the train and eval steps and the model's initialisers takes seconds, and every
run (every point of a sweep, every test) would compile the same programs again. With the
cache, a repeated program loads from disk, with bitwise the same results
(docs/performance.md has the saving). JAX keys entries by the program, the jax/jaxlib
version and the device, so a stale entry is never used.

Where: $JAX_COMPILATION_CACHE_DIR if it is set (JAX's own variable; set it to '' to turn
the cache off), else ~/.cache/research/jax-compilation.
"""

import os
import pathlib

import jax

ENV = "JAX_COMPILATION_CACHE_DIR"
DEFAULT = pathlib.Path("~/.cache/research/jax-compilation").expanduser()


def enable() -> str | None:
  """Turns the cache on (unless disabled); returns its directory."""
  path = os.environ.get(ENV, str(DEFAULT))
  if not path:
    return None
  jax.config.update("jax_compilation_cache_dir", path)
  # Cache every program, not only those that took over a second to compile: the many
  # small ones (initialisers, eval steps) add up.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return path
