"""Sweeps: a list of config overrides (points) times seeds, each run as its own process.

An experiment module declares one with `get_sweep(variant) -> Sweep` beside `get_config`,
or the user gives a grid on the command line (`--grid`). Every run is a plain command
line of the same experiment, in its own workdir DIR/POINT/seed_N, so that

- re-running the sweep skips finished runs (summary.json) and resumes interrupted ones
  from their checkpoints: nothing is computed twice;
- `--print-commands` hands the runs to any scheduler (GNU parallel, a SLURM array);
- `--aggregate-only` gathers whatever has finished into results.csv, results.md and
  plots (research/sweep_results.py).

With `--cv_folds K` each (point, seed) is K runs, DIR/POINT/seed_N_fold_K, each
validating on its own stratified fold of the training split (config.cv_fold), and the
results are mean ± std over folds and seeds.

On a host with GPUs, `--parallel N` gives each run one GPU of its own
(CUDA_VISIBLE_DEVICES) and runs at most as many at once as there are GPUs; on a TPU host
the runs go one at a time, each over every chip (`job_slots`).

The sweep directory may be a URL (gs://...): planning, `--print-commands` and
`--aggregate-only` read and write it through `etils.epath`. Running the jobs from here
needs a local one (`check_can_execute`): each job's output goes to a local log file.
"""

from collections.abc import Callable, Mapping, Sequence
import dataclasses
import glob
import importlib.util
import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

from etils import epath
import ml_collections

from research import configs
from research import errors
from research import normalization
from research import outputs
from research.training import resume


@dataclasses.dataclass(frozen=True)
class Point:
  """One setting of the sweep: config overrides by dotted key, e.g.
  {"augment": "crop,flip", "model_kwargs.widths": (512,)}. `published` holds the
  published figures to print beside ours, as fractions: {"test_accuracy": 0.5039}.

  A point may build on another's runs (a pre-trained model, a teacher): its runs start
  only once every run of the points named in `after` has finished, and a string override
  may name their workdirs through `{sweep_dir}` and `{seed}`, filled in when the sweep is
  planned: {"init_from": "{sweep_dir}/pretrain/seed_{seed}"}. `seeds`, if set, runs this
  point at fewer seeds than the sweep (e.g. one teacher for three students).

  Points with the same `series` (e.g. one arm of a comparison) are one line of the
  curves against `Sweep.x`."""
  overrides: Mapping
  name: str = ""
  published: Mapping = dataclasses.field(default_factory=dict)
  after: Sequence[str] = ()
  seeds: int | None = None
  series: str = ""

  @property
  def label(self) -> str:
    return self.name or default_name(self.overrides)


@dataclasses.dataclass(frozen=True)
class Sweep:
  """points x seeds. `x`, a numeric override key, makes the plots curves against it
  (e.g. label_corruption, model_kwargs.widths: a sequence's first element), with
  `x_label` and a log scale if `x_log`; otherwise there is one bar per point.
  `plot_error` plots error (100 - accuracy) instead of accuracy. `analysis`, if set, is
  called after the runs as `analysis(finished jobs, sweep_dir) -> (markdown, paths)`: what
  a study measures on the trained models, appended to results.md (research/sweep_results.py)."""
  points: Sequence[Point]
  seeds: int = 1
  x: str = ""
  x_label: str = ""
  x_log: bool = False
  plot_error: bool = False
  title: str = ""
  published_source: str = ""
  analysis: Callable | None = None

  def __post_init__(self):
    labels = [p.label for p in self.points]
    repeated = sorted({n for n in labels if labels.count(n) > 1})
    if repeated:
      raise errors.ConfigError(f"sweep points share the names {repeated}; give each a "
                               "distinct name.")
    for i, point in enumerate(self.points):
      unknown = set(point.after) - set(labels[:i])
      if unknown:
        raise errors.ConfigError(
            f"sweep point {point.label!r} waits for {sorted(unknown)}, which are not "
            "points listed before it; list the points it builds on first.")


def grid(**axes: Sequence) -> list[Point]:
  """The cartesian product: grid(augment=['none', 'crop'], weight_decay=[0, 5e-4]).
  Dotted keys go through a dict: grid(**{'model_kwargs.widths': [(64,), (512,)]})."""
  keys = list(axes)
  return [Point(dict(zip(keys, values))) for values in itertools.product(*axes.values())]


def default_name(overrides: Mapping) -> str:
  """{'augment': 'crop,flip', 'weight_decay': 0.0005} -> 'augment=crop+flip,weight_decay=0.0005'."""
  if not overrides:
    return "base"
  parts = []
  for key, value in overrides.items():
    if isinstance(value, (tuple, list)):
      value = "x".join(str(v) for v in value)
    parts.append(re.sub(r"[^A-Za-z0-9_.=+-]", "+", f"{key.rsplit('.', 1)[-1]}={value}"))
  return "__".join(parts)


def format_value(value) -> str:
  """How `--config.KEY=VALUE` spells a value so that config_flags parses it back."""
  if isinstance(value, (tuple, list)):
    return repr(tuple(value))
  return str(value) if isinstance(value, str) else repr(value)


def parse_grid(text: str) -> list[Point]:
  """--grid='{"weight_decay": [0, 5e-4], "augment": ["none", "crop"]}' -> points."""
  try:
    axes = json.loads(text)
  except ValueError as e:
    raise errors.ConfigError(f"--grid is not JSON ({e}); write it as "
                             '\'{"weight_decay": [0, 0.0005]}\'.') from None
  if not isinstance(axes, dict) or not all(isinstance(v, list) and v for v in axes.values()):
    raise errors.ConfigError("--grid must map config keys to non-empty lists of values, "
                             'e.g. \'{"weight_decay": [0, 0.0005]}\'.')
  return grid(**{k: [tuple(v) if isinstance(v, list) else v for v in values]
                 for k, values in axes.items()})


@dataclasses.dataclass
class Job:
  """One run of the sweep: a point at one seed, on one cross-validation fold if any."""
  point: Point
  seed: int
  workdir: epath.Path
  config: ml_collections.ConfigDict
  argv: list[str]
  fold: int | None = None

  @property
  def name(self) -> str:
    return f"{self.point.label}/{run_dir_name(self.seed, self.fold)}"

  @property
  def log_path(self) -> epath.Path:
    return self.workdir / "output.log"

  def summary(self) -> dict | None:
    return outputs.RunDir(self.workdir).read_summary()


def run_dir_name(seed: int, fold: int | None = None) -> str:
  """A run's folder under its point's: seed_N, or seed_N_fold_K in cross-validation."""
  return f"seed_{seed}" if fold is None else f"seed_{seed}_fold_{fold}"


def plan(sweep: Sweep, base: ml_collections.ConfigDict, sweep_dir: str | os.PathLike,
         num_seeds: int, command: Sequence[str], config_arg: str,
         user_overrides: Mapping, cv_folds: int = 0) -> list[Job]:
  """Every (point, seed), and with `cv_folds` K every fold of each (config.cv_folds=K,
  config.cv_fold=0..K-1), with its config and command line. Raises ConfigError, naming
  the point and key, for an override that the config does not have or rejects."""
  sweep_dir = epath.Path(sweep_dir)
  folds = range(cv_folds) if cv_folds else [None]
  jobs = []
  for point in sweep.points:
    seeds = min(point.seeds or num_seeds, num_seeds)
    for seed, fold in itertools.product(range(base.seed, base.seed + seeds), folds):
      run = {"seed": seed}
      if fold is not None:
        run.update(cv_folds=cv_folds, cv_fold=fold)
      point_overrides = _fill_in(point.overrides, sweep_dir=sweep_dir, seed=seed)
      config = ml_collections.ConfigDict(base.to_dict())  # a copy with the same types,
      config.lock()                                       # and no new keys
      try:
        config.update_from_flattened_dict({**point_overrides, **run})
        configs.validate(config)
      except (KeyError, AttributeError, TypeError, ValueError, errors.ConfigError) as e:
        raise errors.ConfigError(f"sweep point {point.label!r}: {e}") from None
      workdir = sweep_dir / point.label / run_dir_name(seed, fold)
      overrides = {**user_overrides, **point_overrides, **run}
      argv = [*command, "--nosweep", f"--workdir={workdir}", f"--config={config_arg}",
              *(f"--config.{k}={format_value(v)}" for k, v in overrides.items())]
      jobs.append(Job(point, seed, workdir, config, argv, fold))
  return jobs


def _fill_in(overrides: Mapping, **fields) -> dict:
  """String overrides with `{sweep_dir}` and `{seed}` replaced by this run's values."""
  def fill(value):
    if not isinstance(value, str):
      return value
    for name, field in fields.items():
      value = value.replace("{" + name + "}", str(field))
    return value
  return {key: fill(value) for key, value in overrides.items()}


def check_existing(jobs: Sequence[Job]) -> None:
  """Refuses, before anything runs, a workdir that holds a run of another config: a
  changed sweep must not mix old results into new rows, nor overwrite them."""
  clashes = []
  for job in jobs:
    saved = outputs.RunDir(job.workdir).read_config()
    if saved is None:
      continue
    # Values measured at load (normalisation) are compared by the run itself, once known.
    refused = resume.refused_changes(resume.changed_keys(saved, job.config))
    changed = {k: v for k, v in refused.items()
               if k not in normalization.unresolved_keys(job.config)}
    if changed:
      clashes.append(f"{job.workdir}: " + "; ".join(
          f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items()))
  if clashes:
    raise errors.WorkdirError(
        "the sweep directory holds runs of a different config:\n  " + "\n  ".join(clashes)
        + "\nUse a new --workdir for the changed sweep; nothing was changed.")


def check_can_execute(sweep_dir: str | os.PathLike) -> None:
  """Running the jobs from here writes their output to DIR/POINT/seed_N/output.log, a
  local file that a process writes into: a URL sweep directory is refused, before any
  work, with what to do instead."""
  if outputs.is_url(sweep_dir):
    raise errors.WorkdirError(
        f"A sweep runs its jobs here with their logs in local files, so {sweep_dir} "
        "cannot be its directory. Pass --print-commands to get one command line per run "
        "(each writes to its own workdir under the URL), run them anywhere, then gather "
        "the results with --aggregate-only; or give a local --workdir.")


def status(job: Job) -> str:
  """'done' (summary.json), 'partial' (checkpoints to resume from) or 'new'."""
  if job.summary() is not None:
    return "done"
  return "partial" if (job.workdir / "checkpoints").is_dir() else "new"


def print_commands(jobs: Sequence[Job], file=sys.stdout) -> None:
  """One shell line per run not yet done, for a scheduler: `python` stands for this
  interpreter, so that the lines work wherever the project's environment is active.
  Runs that build on others (Point.after) come after them: a scheduler that runs lines
  at once must run those points as a later stage."""
  for job in jobs:
    if status(job) != "done":
      argv = ["python", *job.argv[1:]] if job.argv[0] == sys.executable else job.argv
      print(shlex.join(argv), file=file)


@dataclasses.dataclass(frozen=True)
class Accelerators:
  """What the sweep's runs will find: `platform` 'cpu', 'gpu' or 'tpu', and `ids`, the
  GPUs as CUDA_VISIBLE_DEVICES names them, or the TPU chips' device files."""
  platform: str = "cpu"
  ids: tuple[str, ...] = ()


def detect_accelerators() -> Accelerators:
  """The host's GPUs or TPU chips, found without starting JAX in this process: JAX here
  would hold GPU memory, or the TPU, while the runs need them. JAX_PLATFORMS=cpu means
  the CPU, whatever the host has."""
  if os.environ.get("JAX_PLATFORMS", "").split(",")[0] == "cpu":
    return Accelerators()
  gpus = visible_gpus(os.environ.get("CUDA_VISIBLE_DEVICES"), _nvidia_smi_listing())
  if gpus:
    return Accelerators("gpu", gpus)
  chips = tpu_chips(glob.glob("/dev/accel*") + glob.glob("/dev/vfio/*"))
  if chips and importlib.util.find_spec("libtpu") is not None:
    return Accelerators("tpu", chips)
  return Accelerators()


def visible_gpus(cuda_visible_devices: str | None, nvidia_smi_listing: str) -> tuple[str, ...]:
  """The GPUs that runs may be given, as CUDA_VISIBLE_DEVICES names them: its entries up
  to the first invalid one (CUDA ignores the rest, e.g. after -1) when it is set, else
  0..N-1 for the N GPUs that `nvidia-smi -L` lists."""
  count = sum(line.startswith("GPU ") for line in nvidia_smi_listing.splitlines())
  if not count:
    return ()
  if cuda_visible_devices is None:
    return tuple(str(i) for i in range(count))
  ids = []
  for entry in cuda_visible_devices.split(","):
    entry = entry.strip()
    if not entry or entry.startswith("-"):
      break
    ids.append(entry)
  return tuple(ids)


def tpu_chips(device_files: Sequence[str]) -> tuple[str, ...]:
  """The TPU chips among device files: /dev/accelN (TPU v2 to v4), /dev/vfio/N (v5e on)."""
  return tuple(sorted(f for f in device_files if re.fullmatch(r"/dev/(accel|vfio/)\d+", f)))


def _nvidia_smi_listing() -> str:
  try:
    return subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                          timeout=60).stdout
  except (OSError, subprocess.SubprocessError):
    return ""


def job_slots(accelerators: Accelerators, parallel: int) -> tuple[list[dict], str]:
  """The environment of each run that may go at once, and a line for the log when the
  accelerators change what `parallel` asked for. Runs on a CPU, or one at a time, take
  the environment as it is: a lone run uses every device."""
  if accelerators.platform == "cpu" or parallel == 1:
    return [{}] * parallel, ""
  count = len(accelerators.ids)
  if accelerators.platform == "tpu":
    return [{}], (f"--parallel {parallel} on a TPU host ({count} chip(s)): the runs go one "
                  "at a time, each over every chip, because a TPU chip serves one process")
  slots = [{"CUDA_VISIBLE_DEVICES": gpu} for gpu in accelerators.ids[:parallel]]
  head = f"--parallel {parallel} but {count} GPU(s)" if parallel > count else f"{count} GPUs"
  pace = f"{len(slots)} runs at a time" if len(slots) > 1 else "the runs go one at a time"
  return slots, (f"{head}: {pace}, one GPU each (CUDA_VISIBLE_DEVICES), so that no two "
                 "runs share a GPU's memory")


@dataclasses.dataclass
class Outcome:
  skipped: list[str] = dataclasses.field(default_factory=list)
  failed: list[str] = dataclasses.field(default_factory=list)
  interrupted: bool = False   # a signal here, or a job that stopped resumably


def execute(jobs: Sequence[Job], parallel: int = 1, log=print,
            accelerators: Accelerators | None = None) -> Outcome:
  """Runs the jobs that are not done, `parallel` at a time or as many as the
  accelerators allow (`job_slots`; default: `detect_accelerators()`), each in its own
  session so that a Ctrl-C reaches only this process, which passes it on as one SIGTERM:
  every running job saves a checkpoint and stops, and the next call resumes it. A second
  Ctrl-C passes on a second SIGTERM, which stops the jobs at once."""
  slots, why = job_slots(accelerators or detect_accelerators(), parallel)
  if why:
    log(why)
  outcome = Outcome()
  todo = []
  for job in jobs:
    if status(job) == "done":
      outcome.skipped.append(job.name)
    else:
      todo.append(job)
  if outcome.skipped:
    log(f"skipping {len(outcome.skipped)} finished run(s)")
  running: dict[subprocess.Popen, tuple[Job, float, int]] = {}
  stop, durations = [], []
  unfinished = {job.name for job in todo}

  def on_signal(signum, frame):
    if not stop:
      log(f"{signal.Signals(signum).name}: stopping the running jobs at their next step "
          "(they save a checkpoint); run the same command again to resume")
    for proc in running:
      proc.send_signal(signal.SIGTERM)
    stop.append(signum)

  previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
  total, finished = len(jobs), len(outcome.skipped)
  try:
    while todo or running:
      _drop_orphans(todo, jobs, unfinished, running, outcome, log)
      ready = [job for job in todo if not _prerequisites(job, jobs, unfinished)]
      while ready and len(running) < len(slots) and not stop:
        job, slot = ready.pop(0), _free_slot(running, len(slots))
        todo.remove(job)
        running[_launch(job, slots[slot], log)] = (job, time.perf_counter(), slot)
      for proc in [p for p in running if p.poll() is not None]:
        job, started, _ = running.pop(proc)
        durations.append(time.perf_counter() - started)
        finished += proc.returncode == 0
        if proc.returncode == 0:
          unfinished.discard(job.name)
        left = len(todo) + len(running)
        eta = sum(durations) / len(durations) * left / len(slots)
        _report(job, proc.returncode, durations[-1],
                f"{finished}/{total}" + (f", about {eta / 60:.0f} min left" if left else ""),
                outcome, log)
      if stop and not running:
        break
      time.sleep(0.2)
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
  outcome.interrupted = outcome.interrupted or bool(stop)
  return outcome


def _prerequisites(job: Job, jobs: Sequence[Job], unfinished: set) -> list[Job]:
  """The runs of the points that `job` builds on (Point.after) that have not finished."""
  return [j for j in jobs if j.point.label in job.point.after and j.name in unfinished]


def _drop_orphans(todo: list, jobs: Sequence[Job], unfinished: set, running: Mapping,
                  outcome: Outcome, log) -> None:
  """Takes out of `todo`, as failed, the runs whose prerequisite failed: they would build
  on nothing. A prerequisite that is running or still to run is not failed."""
  waiting = {job.name for job, _, _ in running.values()} | {job.name for job in todo}
  for job in list(todo):
    failed = [j.name for j in _prerequisites(job, jobs, unfinished) if j.name not in waiting]
    if failed:
      todo.remove(job)
      outcome.failed.append(f"{job.name}: not run, as {', '.join(failed)} did not finish")
      log(f"{job.name} not run: it builds on {', '.join(failed)}, which did not finish")


def _free_slot(running: Mapping, count: int) -> int:
  taken = {slot for _, _, slot in running.values()}
  return min(set(range(count)) - taken)


def _launch(job: Job, env: Mapping, log) -> subprocess.Popen:
  job.workdir.mkdir(parents=True, exist_ok=True)
  state = status(job)
  device = "".join(f" on {k}={v}" for k, v in env.items())
  log(f"{'resuming' if state == 'partial' else 'starting'} {job.name}{device} "
      f"(log: {job.log_path})")
  with open(os.fspath(job.log_path), "a") as out:   # local: check_can_execute
    out.write(f"$ {shlex.join([*(f'{k}={v}' for k, v in env.items()), *job.argv])}\n")
    out.flush()
    return subprocess.Popen(job.argv, stdout=out, stderr=subprocess.STDOUT,
                            env={**os.environ, **env}, start_new_session=True)


def _report(job: Job, code: int, seconds: float, count: str, outcome: Outcome, log) -> None:
  if code == 0:
    summary = job.summary() or {}
    validation = (f" validation {summary['validation_accuracy']:.2%}"
                  if "validation_accuracy" in summary else "")
    log(f"[{count}] done {job.name}: train {summary.get('train_accuracy', float('nan')):.2%}"
        f"{validation} test {summary.get('test_accuracy', float('nan')):.2%} "
        f"({seconds:.0f} s)")
    return
  reason = {errors.Interrupted.EXIT_CODE: "interrupted (resumable)",
            2: "failed: bad input or config"}.get(code, f"crashed with exit code {code}")
  outcome.failed.append(f"{job.name}: {reason}")
  outcome.interrupted |= code == errors.Interrupted.EXIT_CODE
  tail = job.log_path.read_bytes().decode(errors="replace").strip().splitlines()[-3:]
  log(f"{job.name} {reason}; last lines of {job.log_path}:\n    " + "\n    ".join(tail))
