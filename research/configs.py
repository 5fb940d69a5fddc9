"""The config every experiment starts from, and its validation.

Experiments call `base_config()` and override what their recipe sets. Every knob of a run
lives in this one object, which is saved beside the results as config.json.
"""

import ml_collections

from research import corruption
from research import errors
from research import losses
from research import normalization
from research import optim
from research import preprocess
from research import runtime
from research import xla_cpu
from research.data import images
from research.models import MODELS
from research.models import accepts

DATA_SOURCES = ("auto", "local", "tfds", "download")
BATCH_NORM = ("auto", "on", "off")
COMPUTE_DTYPES = ("float32", "bfloat16")
ASYNC_CHECKPOINTS = ("auto", "on", "off")
FREEZE = ("none", "backbone")


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # Data.
  c.dataset = "mnist"
  c.data_dir = ""                 # '' -> $RESEARCH_DATA_DIR, then tfds, then a download
  # auto: local files, an earlier download, tfds, a download | local | tfds | download
  c.data_source = "auto"
  # Base URL(s), comma-separated, of a mirror holding <dataset>/<file> of the original
  # distributions (research/data/download.py); '' -> $RESEARCH_DOWNLOAD_MIRROR, then the
  # canonical sources. The published md5 sums are checked either way.
  c.download_mirror = ""
  c.validation_size = 0.0         # fraction (<1) or count of train examples held out
  c.split_seed = 0                # the held-out split does not change with `seed`
  # Cross-validation (a sweep's --cv_folds K sets both): validate on fold cv_fold of
  # cv_folds stratified folds of the training split (seeded by split_seed) and train on
  # the others. 0 = no folds; used instead of validation_size. The test split is untouched.
  c.cv_folds = 0
  c.cv_fold = 0
  c.train_subset = 0              # train on this many examples (0 = all), seeded
  # Train on this many examples of each class (0 = all): a stratified few-shot sample
  # drawn with `seed` (a new seed is a new draw), after config.classes and validation.
  c.train_per_class = 0
  c.test_subset = 0               # evaluate on this many test examples (0 = all)
  # Train and test on these classes only, by index or name, relabelled 0..k-1 in the
  # order given, before the validation split is carved: e.g. (3, 5) or ('cat', 'dog')
  # is CIFAR-10's cat against dog. () = all.
  c.classes = ()
  # Images as files come (docs/own_data.md): resized on load with an antialiasing filter
  # (PIL bilinear, as torchvision's Resize), part of the decode cache's key.
  c.image_size = ()               # (height, width); () = as stored (all the same size)
  c.channels = 0                  # 1 (grayscale) | 3 (RGB) | 0 = as the data holds
  c.on_bad_image = "error"        # error | skip: a file that does not decode, named either way
  # Per-channel input normalisation (research/normalization.py), on pixels scaled to
  # [0, 1] (float data: as is). auto: the training split's mean and std, measured at
  # load; none: mean 0, std 1; explicit: the two keys below. The run's config.json
  # records the values used.
  c.normalize = "auto"            # auto | none | explicit
  c.normalize_mean = ()           # per channel; set only with normalize='explicit'
  c.normalize_std = ()
  c.augment = "none"              # comma-separated: crop, flip, cutout, rotate, scale,
                                  # alternating_flip (preprocess.py)
  c.crop_padding = 4
  c.crop_fill = "zero"            # crop's padding: zero (the mean) | reflect (airbench)
  c.cutout_size = 8               # side of the square that `cutout` zeroes (the mean)
  c.rotate_degrees = 15.0         # rotate: by a random angle in [-this, this] degrees
  c.scale_range = (0.9, 1.1)      # scale: by a random factor in [low, high] (> 1 zooms in)
  # Zhang et al. 2017 corruptions, seeded by `seed`, applied on the host at load time.
  c.label_corruption = 0.0        # this fraction of train labels -> uniform random class
  c.input_corruption = "none"     # none | shuffled_pixels | random_pixels | gaussian
                                  # (train, validation and test images alike)
  # Model.
  c.model = "mlp"
  c.model_kwargs = ml_collections.ConfigDict()
  # Study knobs passed to the model constructor when set; the sentinels keep the model's
  # own default (e.g. VGG has BatchNorm, S6 has dropout 0.2). Setting one in both here
  # and model_kwargs is an error.
  c.dropout = -1.0                # -1 = model default; else the rate in [0, 1)
  c.batch_norm = "auto"           # auto (model default) | on | off
  c.width_multiplier = 1.0        # scales hidden widths and channels; 1 = as defined
  c.depth_multiplier = 1          # repeats each MLP hidden layer / VGG conv; 1 = as defined
  # Transfer learning (docs/transfer.md). init_from: a finished run's workdir whose
  # parameters and BatchNorm statistics start a fresh run (not a resumed one); the head
  # (research/models HEAD) is re-initialised unless the classes are the same. '' = off.
  # Checked when the run starts, not here: a sweep may plan a run before its source exists.
  c.init_from = ""
  # none | backbone: only the head trains; the backbone runs in inference mode (BatchNorm
  # statistics fixed, dropout off) and its parameters get no updates.
  c.freeze = "none"
  c.backbone_lr_multiplier = 1.0  # scales the backbone's updates (with freeze=none)
  # Optimisation.
  c.optimizer = "adam"
  c.learning_rate = 1e-3
  c.momentum = 0.9
  c.beta1 = 0.9
  c.beta2 = 0.999
  c.eps = 1e-7                    # Keras' default, which the seed recipes used
  c.rmsprop_decay = 0.9
  c.weight_decay = 0.0
  # Penalties added to the loss, over kernels only (params with ndim > 1), in Keras'
  # convention: l1 * sum|w| + l2 * sum(w^2) (no 1/2; l2=c equals PyTorch weight_decay=2c
  # for SGD). The logged train loss includes them; eval losses do not.
  c.l1 = 0.0
  c.l2 = 0.0
  # Srivastava et al. 2014: after each update, rescale each unit's incoming weight vector
  # (a kernel's last axis indexes units) to L2 norm <= max_norm. 0 = off.
  c.max_norm = 0.0
  c.lr_schedule = "constant"
  c.warmup_epochs = 0.0
  c.lr_decay_factor = 0.1
  c.lr_step_epochs = ()          # epochs at which 'step' multiplies by lr_decay_factor
  # The CIFAR-10 speed-run recipe's knobs (experiments/airbench.py); off at these values.
  # lr_schedule='triangular': linear from lr_start_factor x learning_rate up to
  # learning_rate at lr_peak_fraction of the run, then linear to lr_end_factor x it.
  c.lr_start_factor = 0.2
  c.lr_peak_fraction = 0.23
  c.lr_end_factor = 0.07
  c.bn_bias_lr_multiplier = 1.0   # BatchNorm biases (layers named norm*) step this x larger
  # optimizer='muon': conv kernels (4-D) by optax.contrib.muon at this peak learning rate
  # (the schedule's shape), everything else by Nesterov SGD at learning_rate.
  c.muon_learning_rate = 0.05
  # Two more of the paper's code's choices, off here by default (docs/airbench.md): weight
  # decay on every parameter, not on kernels only (the BatchNorm biases' divided by
  # bn_bias_lr_multiplier: the same decay per step as the rest), and the whitening bias
  # frozen after whiten_bias_epochs epochs (0 = trained throughout), which also spares
  # each later step the gradient through the first layer (docs/performance.md).
  c.decay_all_params = False
  c.whiten_bias_epochs = 0
  # Weight averaging: every averaging_every steps, average <- d * average + (1 - d) *
  # weights, with d = averaging_decay * (step / total steps) ** averaging_decay_power;
  # lookahead also sets the weights to the average. Evaluation, checkpoints' served model
  # and predictions use the average (of the parameters and BatchNorm statistics).
  c.weight_averaging = "none"     # none | ema | lookahead
  c.averaging_every = 5
  c.averaging_decay = 0.95 ** 5
  c.averaging_decay_power = 3.0
  # Test-time augmentation at evaluation: none | flip (mean logits of the image and its
  # mirror) | flip_translate (half that, half the same of 1-pixel shifts up-left and
  # down-right, reflect-padded: airbench's 6 views).
  c.tta = "none"
  c.whitening_examples = 5000     # seeded training images a data-initialised model sees
  # cross_entropy | mse | binary_cross_entropy: one sigmoid output unit for 2 classes
  # (class 1 is the positive; predicted where the logit is > 0).
  c.loss = "cross_entropy"
  c.label_smoothing = 0.0
  # Per-class weights of the training loss, for imbalanced data (eval losses are not
  # weighted): '' (none) | 'balanced' (n_samples / (n_classes * count), counted on the
  # training labels) | one number per class, comma-separated, e.g. '1,4.5'.
  c.class_weights = ""
  # Compression (docs/compression.md, research/compression.py). Pruning and quantising
  # apply once, to the weights a fresh run starts from (e.g. those of config.init_from).
  # Magnitude pruning: zero this fraction of all conv and dense kernel weights, the
  # smallest |w| under one global threshold (biases and BatchNorm are kept), and keep
  # them zero through training (the optimiser's last transform masks the updates).
  c.prune_sparsity = 0.0
  # Post-training quantisation: none | int8 (kernels as int8, a float32 scale per output
  # channel, dequantised for inference). Needs num_epochs=0: an evaluation-only run.
  c.quantize = "none"
  # Distillation (Hinton et al. 2015): the finished run in this workdir is the teacher,
  # its eval-mode logits on each augmented batch the soft targets. '' = off. The loss is
  # alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * cross-entropy.
  c.distill_from = ""
  c.distill_temperature = 4.0
  c.distill_alpha = 0.9
  # Run.
  c.batch_size = 128
  # Speed knobs; what each one gains, per platform: docs/performance.md.
  # Gradients over slices of this many examples per device, averaged (0 = the whole
  # batch at once): the same update up to float rounding.
  c.micro_batch_size = 0
  # With micro_batch_size, BatchNorm normalises each slice on its own ("ghost batch
  # norm", Hoffer et al. 2017): a different model, so it must be asked for.
  c.ghost_batch_norm = False
  c.eval_batch_size = 1000
  # The dtype of the forward and backward passes: float32 | bfloat16 (mixed precision,
  # for GPUs and TPUs). Parameters, optimiser state, BatchNorm statistics, the loss and
  # the checkpoints stay float32 either way.
  c.compute_dtype = "float32"
  # The library XLA:CPU runs convolutions with: auto | ynnpack | eigen. Ignored elsewhere.
  c.cpu_convolutions = "auto"
  # Train steps per jitted call; the results do not depend on it.
  c.steps_per_call = 16
  c.num_epochs = 10
  c.seed = 0
  c.num_devices = 0               # 0 = every device (of every process)
  # The backend the run must be on: auto (whatever JAX picked) | cpu | gpu | tpu. A named
  # one that JAX is not on stops the run before any work (research/runtime.py).
  c.platform = "auto"
  c.log_every_steps = 200
  c.eval_every_epochs = 1         # 0 = only at the end
  c.final_train_eval = True       # re-evaluate the train split in inference mode at the end
  # Also evaluate the training split (with its possibly corrupted labels, in inference
  # mode) at every evaluation, logged as split 'train_eval': the train curve of the
  # studies and the generalisation gap per epoch. Costs one inference pass over it.
  c.eval_train = False
  c.eval_train_size = 0           # ... over this many fixed training examples (0 = all)
  c.progress = True
  c.mode = "train"                # train | eval (load the best or latest checkpoint, test it)
  # Checkpoints (docs/checkpoints.md). A run resumes from WORKDIR/checkpoints when re-run.
  c.checkpoint_every_steps = 0    # 0 = not by steps
  c.checkpoint_every_epochs = 1   # 0 = not by epochs; the end of the run is always saved
  c.keep_checkpoints = 3          # the last K, plus the best by best_metric
  c.best_metric = ""              # e.g. validation_accuracy, validation_macro_f1,
                                  # test_loss; '' = none
  c.best_mode = "auto"            # max | min | auto (max for accuracy, min for loss)
  c.early_stopping_patience = 0   # stop after this many evaluations without a new best
  c.restore_best = False          # report (summary.json, mode=eval) the best checkpoint
  # auto: saves are asynchronous on GPU and TPU (training goes on while orbax writes),
  # synchronous on CPU, where a storage error surfaces at the step that caused it.
  c.async_checkpoints = "auto"    # auto | on | off
  return c


MODES = ("train", "eval")


def _check_choice(config, key, choices):
  if config[key] not in choices:
    raise errors.ConfigError(f"config.{key}={config[key]!r} is not one of {sorted(choices)}.")


def _check_positive(config, key, allow_zero=False):
  value = config[key]
  if value < 0 or (value == 0 and not allow_zero):
    raise errors.ConfigError(f"config.{key}={value!r} must be {'>= 0' if allow_zero else '> 0'}.")


def validate(config: ml_collections.ConfigDict) -> None:
  """Rejects bad values before any work starts, naming the key."""
  _check_choice(config, "model", MODELS)
  _check_choice(config, "optimizer", optim.OPTIMIZERS)
  _check_choice(config, "lr_schedule", optim.SCHEDULES)
  _check_choice(config, "loss", losses.LOSSES)
  if config.class_weights not in ("", "balanced"):
    losses.parse_class_weights(config.class_weights)
  _check_classes(config.classes)
  _check_choice(config, "data_source", DATA_SOURCES)
  _check_download_mirror(config)
  _check_images(config)
  _check_choice(config, "cpu_convolutions", xla_cpu.CONVOLUTION_LIBRARIES)
  _check_choice(config, "platform", runtime.PLATFORMS)
  _check_choice(config, "compute_dtype", COMPUTE_DTYPES)
  preprocess.parse_augment(config.augment)
  _check_affine_augmentation(config)
  _check_choice(config, "input_corruption", corruption.INPUT_CORRUPTIONS)
  _check_choice(config, "batch_norm", BATCH_NORM)
  _check_transfer(config)
  for key in ("label_corruption",):
    if not 0 <= config[key] <= 1:
      raise errors.ConfigError(f"config.{key}={config[key]} must be in [0, 1].")
  if config.dropout != -1 and not 0 <= config.dropout < 1:
    raise errors.ConfigError(f"config.dropout={config.dropout} must be in [0, 1), or -1 "
                             "for the model's default.")
  for key in ("l1", "l2", "max_norm"):
    _check_positive(config, key, allow_zero=True)
  for key in ("width_multiplier", "depth_multiplier", "cutout_size"):
    _check_positive(config, key)
  model_kwargs(config)
  _check_positive(config, "num_epochs", allow_zero=True)   # 0: evaluate only
  for key in ("batch_size", "eval_batch_size", "learning_rate",
              "log_every_steps", "steps_per_call"):
    _check_positive(config, key)
  _check_positive(config, "micro_batch_size", allow_zero=True)
  for key in ("weight_decay", "label_smoothing", "validation_size", "warmup_epochs",
              "num_devices", "eval_every_epochs", "crop_padding", "train_subset",
              "test_subset", "eval_train_size", "train_per_class"):
    _check_positive(config, key, allow_zero=True)
  if not 0 <= config.label_smoothing < 1:
    raise errors.ConfigError(f"config.label_smoothing={config.label_smoothing} must be in [0, 1).")
  _check_choice(config, "mode", MODES)
  _check_compression(config)
  _check_choice(config, "best_mode", ("auto", "max", "min"))
  for key in ("checkpoint_every_steps", "checkpoint_every_epochs", "early_stopping_patience"):
    _check_positive(config, key, allow_zero=True)
  _check_positive(config, "keep_checkpoints")
  _check_choice(config, "async_checkpoints", ASYNC_CHECKPOINTS)
  _check_cross_validation(config)
  _check_best_metric(config)
  normalization.validate(config)
  _check_speed_run(config)


WEIGHT_AVERAGING = ("none", "ema", "lookahead")
TTA = ("none", "flip", "flip_translate")
CROP_FILLS = ("zero", "reflect")


def _check_speed_run(config) -> None:
  """The speed-run recipe's knobs (experiments/airbench.py)."""
  for key, choices in (("weight_averaging", WEIGHT_AVERAGING), ("tta", TTA),
                       ("crop_fill", CROP_FILLS)):
    _check_choice(config, key, choices)
  for key in ("bn_bias_lr_multiplier", "averaging_every", "muon_learning_rate",
              "whitening_examples"):
    _check_positive(config, key)
  for key in ("lr_start_factor", "lr_end_factor", "averaging_decay_power",
              "whiten_bias_epochs"):
    _check_positive(config, key, allow_zero=True)
  for key in ("lr_peak_fraction", "averaging_decay"):
    if not 0 <= config[key] < 1:
      raise errors.ConfigError(f"config.{key}={config[key]} must be in [0, 1).")


QUANTIZE = ("none", "int8")


def _check_compression(config) -> None:
  """The pruning, quantisation and distillation keys; a teacher's workdir is checked
  when the run starts (a sweep may plan runs before their teacher exists)."""
  if not 0 <= config.prune_sparsity < 1:
    raise errors.ConfigError(f"config.prune_sparsity={config.prune_sparsity} must be in "
                             "[0, 1), the fraction of kernel weights to zero.")
  _check_choice(config, "quantize", QUANTIZE)
  if config.quantize != "none" and config.num_epochs:
    raise errors.ConfigError(f"config.quantize={config.quantize!r} quantises the weights "
                             "after training: set config.num_epochs=0 (evaluate only).")
  if not config.distill_from:
    return
  if config.loss != "cross_entropy":
    raise errors.ConfigError(f"config.distill_from needs config.loss='cross_entropy', "
                             f"not {config.loss!r}.")
  _check_positive(config, "distill_temperature")
  if not 0 <= config.distill_alpha <= 1:
    raise errors.ConfigError(f"config.distill_alpha={config.distill_alpha} must be in "
                             "[0, 1].")


def _check_classes(classes) -> None:
  """Indices (>= 0) or names, at least two, none repeated; checked against the data at
  load."""
  if not classes:
    return
  valid = all((isinstance(c, int) and not isinstance(c, bool) and c >= 0)
              or (isinstance(c, str) and c) for c in classes)
  if not valid or len(classes) < 2 or len(set(classes)) != len(classes):
    raise errors.ConfigError(
        f"config.classes={tuple(classes)!r} must name two or more distinct classes by "
        "index or name, e.g. (3, 5) or ('cat', 'dog'); () for all.")


def _check_transfer(config) -> None:
  """freeze, backbone_lr_multiplier and train_per_class. config.init_from is checked when
  the run starts: a sweep plans a fine-tuning run before the run it starts from exists."""
  _check_choice(config, "freeze", FREEZE)
  if config.backbone_lr_multiplier <= 0:
    raise errors.ConfigError(f"config.backbone_lr_multiplier={config.backbone_lr_multiplier}"
                             " must be > 0 (config.freeze=backbone stops the backbone).")
  if config.freeze == "backbone" and config.backbone_lr_multiplier != 1:
    raise errors.ConfigError("config.backbone_lr_multiplier has no effect with "
                             "config.freeze=backbone (the backbone does not train): "
                             "leave it at 1.")
  if config.freeze == "backbone" and config.max_norm:
    raise errors.ConfigError("config.max_norm would rescale the frozen backbone's weights "
                             "with config.freeze=backbone: set one of them to its default.")
  if config.train_per_class and config.train_subset:
    raise errors.ConfigError(f"config.train_per_class={config.train_per_class} and "
                             f"config.train_subset={config.train_subset} both choose the "
                             "training examples: set one of them to 0.")


def _check_images(config) -> None:
  size = config.image_size
  if size and (len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size)):
    raise errors.ConfigError(f"config.image_size={size!r} must be (height, width), two "
                             "positive integers, or () to keep the stored size.")
  _check_choice(config, "channels", (0, *images.CHANNELS))
  _check_choice(config, "on_bad_image", images.ON_BAD_IMAGE)


def model_kwargs(config: ml_collections.ConfigDict) -> dict:
  """config.model_kwargs plus the top-level model knobs that are set (not at their
  sentinel), checked against what the model's constructor accepts."""
  kwargs = config.model_kwargs.to_dict()
  knobs = {"dropout": (config.dropout, config.dropout != -1),
           "batch_norm": (config.batch_norm == "on", config.batch_norm != "auto"),
           "width_multiplier": (config.width_multiplier, config.width_multiplier != 1.0),
           "depth_multiplier": (config.depth_multiplier, config.depth_multiplier != 1),
           "compute_dtype": (config.compute_dtype, config.compute_dtype != "float32")}
  for key, (value, is_set) in knobs.items():
    if not is_set:
      continue
    if key in kwargs:
      raise errors.ConfigError(f"config.{key} and config.model_kwargs.{key} are both set; "
                               "set only one.")
    if config.model in MODELS and not accepts(config.model, key):
      raise errors.ConfigError(f"config.{key} is not supported by model "
                               f"{config.model!r}; leave it at its default.")
    kwargs[key] = value
  return kwargs


def _check_download_mirror(config) -> None:
  for url in config.download_mirror.split(","):
    if url.strip() and not url.strip().startswith(("http://", "https://")):
      raise errors.ConfigError(f"config.download_mirror: {url.strip()!r} is not an http:// or "
                               "https:// URL (comma-separate several mirrors).")


def _check_affine_augmentation(config) -> None:
  if not 0 <= config.rotate_degrees <= 180:
    raise errors.ConfigError(f"config.rotate_degrees={config.rotate_degrees} must be in "
                             "[0, 180].")
  scale = tuple(config.scale_range)
  if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
    raise errors.ConfigError(f"config.scale_range={scale} must be (low, high) with "
                             "0 < low <= high, e.g. (0.9, 1.1).")


def _check_cross_validation(config) -> None:
  folds, fold = config.cv_folds, config.cv_fold
  if not folds:
    if fold:
      raise errors.ConfigError(f"config.cv_fold={fold} needs config.cv_folds (the number "
                               "of folds, >= 2).")
    return
  if folds < 2:
    raise errors.ConfigError(f"config.cv_folds={folds} must be 0 (no cross-validation) "
                             "or >= 2.")
  if not 0 <= fold < folds:
    raise errors.ConfigError(f"config.cv_fold={fold} must be in [0, {folds - 1}] for "
                             f"config.cv_folds={folds}.")
  if config.validation_size:
    raise errors.ConfigError(f"config.cv_folds={folds} validates on a fold of the training "
                             f"split, in place of config.validation_size="
                             f"{config.validation_size}: set one of them to 0.")


# What config.best_metric may name: a split's evaluation record (research/training/loop.py).
BEST_METRICS = tuple(f"{split}_{key}" for split in ("validation", "test")
                     for key in ("accuracy", "loss", "macro_f1"))


def _check_best_metric(config) -> None:
  metric = config.best_metric
  if metric and metric not in BEST_METRICS:
    raise errors.ConfigError(f"config.best_metric={metric!r} must be one of "
                             f"{', '.join(BEST_METRICS)} (or '' for none).")
  if metric.startswith("validation") and not (config.validation_size or config.cv_folds):
    raise errors.ConfigError(f"config.best_metric={metric!r} needs a validation split: "
                             "set config.validation_size (or config.cv_folds).")
  for key in ("early_stopping_patience", "restore_best"):
    if config[key] and not metric:
      raise errors.ConfigError(f"config.{key} needs config.best_metric, e.g. "
                               "--config.best_metric=validation_accuracy.")
  if (config.early_stopping_patience or metric) and not config.eval_every_epochs:
    raise errors.ConfigError("config.best_metric and early stopping need evaluations: "
                             "set config.eval_every_epochs > 0.")


def best_mode(config) -> str:
  if config.best_mode != "auto":
    return config.best_mode
  return "min" if config.best_metric.endswith("loss") else "max"
