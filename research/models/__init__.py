"""Model registry: configs name models by string.

    model = create_model("mnist_cnn", input_shape=(28, 28, 1), num_classes=10, seed=0)

Adding a model is one function and one line in `MODELS`.
"""

import inspect

from flax import nnx
import jax

from research.models import airbench
from research.models import cnn
from research.models import mlp
from research.models import vgg
from research import errors

MODELS = {
    "mlp": mlp.MLP,                  # S1 and the study MLPs
    "mnist_cnn": cnn.mnist_cnn,      # S2
    "minimal_cnn": cnn.minimal_cnn,  # S3
    "lenet5": cnn.lenet5,            # S4
    "cnn32": cnn.cnn32,              # S5
    "dropout_cnn": cnn.dropout_cnn,  # S6
    "vgg": vgg.VGG,                  # the main job's CIFAR CNN
    "airbench": airbench.Airbench,   # the CIFAR-10 speed-run network (issue 16)
}

# Every registered model names its output layer, the Dense layer that maps features to
# class scores, `head`; the rest is the backbone. Transfer learning re-initialises the
# head for new classes (research/transfer.py) and config.freeze=backbone trains only it.
HEAD = "head"


def is_kernel(param) -> bool:
  """Conv and dense kernels, the parameters with ndim > 1, which weight decay, the l1/l2
  penalties and pruning act on; biases and BatchNorm scales and offsets have ndim 1."""
  return param.ndim > 1


def path_names(path) -> list[str]:
  """The names along a parameter's path in the model's state (e.g. ('head', 'kernel')),
  or along a jax key path."""
  return [str(getattr(k, "key", getattr(k, "name", k))) for k in path]


def is_head(path) -> bool:
  """Whether a parameter's path lies in the head."""
  return path_names(path[:1]) == [HEAD]


def _parameters(name: str) -> dict[str, inspect.Parameter]:
  """The keyword arguments of model `name`. The seed CNN factories forward **kw to
  ConvPoolNet, so ConvPoolNet's are theirs too."""
  factory = MODELS[name]
  # nnx's metaclass hides a Module's signature; read its __init__ instead.
  signature = lambda f: inspect.signature(f.__init__ if isinstance(f, type) else f).parameters
  params = dict(signature(factory))
  if factory.__module__ == cnn.__name__ and any(
      p.kind is p.VAR_KEYWORD for p in params.values()):
    params = {**signature(cnn.ConvPoolNet), **params}
  return params


def accepts(name: str, arg: str) -> bool:
  """Whether model `name` takes hyperparameter `arg`."""
  return arg in _parameters(name)


def default_kwargs(name: str) -> dict:
  """The hyperparameters of model `name` that have a default, with it."""
  return {k: p.default for k, p in _parameters(name).items() if p.default is not p.empty}


# An initialiser runs once, yet XLA can take longer to optimise its unrolled random-number
# code than a smoke run takes to train (most with several distinct layer shapes).
# LLVM's first optimisation level compiles it several times faster and gives bitwise the
# same parameters (tests/test_models.py); level 0 would change their float rounding.
_INITIALISER_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}


def _initialise(make):
  """The module `make()` builds, built under one jit: run eagerly, every initialiser op
  would compile on its own."""
  graphdef, _ = nnx.split(nnx.eval_shape(make))
  build = lambda: nnx.state(make())
  try:
    state = jax.jit(build, compiler_options=_INITIALISER_COMPILER_OPTIONS)()
  except (ValueError, jax.errors.JaxRuntimeError):
    # Inside another trace (e.g. nnx.eval_shape), where a jit takes no compiler options,
    # or on a backend that does not take this one.
    state = jax.jit(build)()
  return nnx.merge(graphdef, state)


def create_model(name: str, *, input_shape, num_classes: int, seed: int = 0, **kwargs):
  """Builds a registered model with parameters initialised from `seed`."""
  try:
    factory = MODELS[name]
  except KeyError:
    raise errors.ConfigError(
        f"Unknown model {name!r}; registered models are {sorted(MODELS)}.") from None
  try:
    return _initialise(lambda: factory(input_shape=tuple(input_shape), num_classes=num_classes,
                                       rngs=nnx.Rngs(params=seed), **kwargs))
  except TypeError as e:
    raise errors.ConfigError(f"Bad hyperparameters for model {name!r}: {e}") from e
