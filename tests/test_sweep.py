"""The sweep runner: planning, a sweep killed halfway that finishes when re-run without
recomputing anything, the plain command lines, and the aggregated results."""

import csv
import json
import os
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO
from experiments import mnist_mlp
import hooked_run
from research import errors
from research import sweep as sweep_lib


def test_grid_is_the_cartesian_product_with_readable_names():
  points = sweep_lib.grid(augment=["none", "crop,flip"], weight_decay=[0.0, 5e-4])
  assert [dict(p.overrides) for p in points] == [
      {"augment": "none", "weight_decay": 0.0}, {"augment": "none", "weight_decay": 5e-4},
      {"augment": "crop,flip", "weight_decay": 0.0},
      {"augment": "crop,flip", "weight_decay": 5e-4}]
  assert points[3].label == "augment=crop+flip__weight_decay=0.0005"
  assert sweep_lib.Point({"model_kwargs.widths": (512, 512)}).label == "widths=512x512"
  assert sweep_lib.Point({}, name="true labels").label == "true labels"


def test_points_must_have_distinct_names():
  with pytest.raises(errors.ConfigError, match="share the names"):
    sweep_lib.Sweep([sweep_lib.Point({"l2": 0.1}, name="a"), sweep_lib.Point({}, name="a")])


@pytest.mark.parametrize("text, message", [
    ("{weight_decay: [0]}", "not JSON"), ('{"weight_decay": 0.1}', "non-empty lists"),
    ('{"weight_decay": []}', "non-empty lists"), ("[1, 2]", "non-empty lists")])
def test_bad_grid_is_a_clear_error(text, message):
  with pytest.raises(errors.ConfigError, match=message):
    sweep_lib.parse_grid(text)


def _plan(points, tmp_path, seeds=1):
  return sweep_lib.plan(sweep_lib.Sweep(points), mnist_mlp.get_config("smoke"), tmp_path,
                        seeds, ["python", "-m", "experiments.mnist_mlp"],
                        "experiments/mnist_mlp.py:smoke", {})


def test_plan_names_the_point_of_a_bad_override(tmp_path):
  with pytest.raises(errors.ConfigError, match="'bad'.*no_such_key"):
    _plan([sweep_lib.Point({"no_such_key": 1}, name="bad")], tmp_path)
  with pytest.raises(errors.ConfigError, match="'neg'.*l2"):
    _plan([sweep_lib.Point({"l2": -1.0}, name="neg")], tmp_path)


def test_plan_gives_each_seed_its_own_workdir_and_command(tmp_path):
  jobs = _plan(sweep_lib.grid(**{"model_kwargs.widths": [(16,), (8, 8)]}), tmp_path,
               seeds=2)
  assert [j.workdir.relative_to(tmp_path).as_posix() for j in jobs] == [
      "widths=16/seed_0", "widths=16/seed_1", "widths=8x8/seed_0", "widths=8x8/seed_1"]
  assert jobs[3].config.seed == 1 and jobs[3].config.model_kwargs.widths == (8, 8)
  assert "--config.model_kwargs.widths=(8, 8)" in jobs[3].argv
  assert "--config.seed=1" in jobs[3].argv and "--nosweep" in jobs[3].argv


def test_a_changed_sweep_does_not_reuse_old_runs(tmp_path):
  job, = _plan([sweep_lib.Point({"l2": 0.1})], tmp_path)
  job.workdir.mkdir(parents=True)
  (job.workdir / "config.json").write_text(job.config.to_json_best_effort())
  sweep_lib.check_existing([job])  # same config: fine
  changed, = _plan([sweep_lib.Point({"l2": 0.1, "learning_rate": 0.5}, name="l2=0.1")],
                   tmp_path)
  with pytest.raises(errors.WorkdirError, match="learning_rate: 0.001 -> 0.5"):
    sweep_lib.check_existing([changed])


def test_print_commands_into_a_closed_pipe_ends_quietly(tmp_path):
  """`--print-commands | head -1` on a sweep whose lines overflow the pipe's buffer."""
  grid = json.dumps({"learning_rate": [1e-3 + i * 1e-6 for i in range(1000)]})
  command = shlex.join([sys.executable, "-m", "experiments.mnist_mlp",
                        f"--workdir={tmp_path}", f"--grid={grid}", "--print-commands"])
  piped = subprocess.run(f"{command} | head -1", shell=True, cwd=REPO, capture_output=True,
                         text=True, timeout=120)
  assert piped.stdout.startswith("python -m experiments.mnist_mlp --nosweep")
  assert "Traceback" not in piped.stderr, piped.stderr[-2000:]


def test_the_sweep_process_leaves_the_accelerator_to_its_runs(data_dir, tmp_path):
  """The sweep's own process checks every point with JAX; asked for a TPU that this
  machine lacks, it would fail if it opened a backend other than the CPU."""
  env = dict(os.environ, JAX_PLATFORMS="tpu", RESEARCH_DATA_DIR=str(data_dir))
  printed = subprocess.run(
      [sys.executable, "-m", "experiments.mnist_mlp", f"--workdir={tmp_path}",
       "--config=experiments/mnist_mlp.py:smoke", '--grid={"l2": [0.0, 0.1]}',
       "--print-commands"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert printed.returncode == 0, printed.stderr[-2000:]
  assert len(printed.stdout.splitlines()) == 2


def test_accelerators_are_read_from_cuda_visible_devices_nvidia_smi_and_dev():
  listing = "GPU 0: NVIDIA H100 (UUID: GPU-a)\nGPU 1: NVIDIA H100 (UUID: GPU-b)\n"
  assert sweep_lib.visible_gpus(None, listing) == ("0", "1")
  assert sweep_lib.visible_gpus("1", listing) == ("1",)
  assert sweep_lib.visible_gpus("GPU-b,0,-1,1", listing) == ("GPU-b", "0")
  assert sweep_lib.visible_gpus("", listing) == ()
  assert sweep_lib.visible_gpus(None, "") == ()   # no nvidia-smi, or no GPU
  assert sweep_lib.tpu_chips(["/dev/accel1", "/dev/accel0", "/dev/accel"]) == (
      "/dev/accel0", "/dev/accel1")
  assert sweep_lib.tpu_chips(["/dev/vfio/vfio", "/dev/vfio/0"]) == ("/dev/vfio/0",)


# A run that records when it ran and which GPU it was given, in its own log.
FAKE_RUN = ("import os, time; print('start', time.time(), "
            "os.environ.get('CUDA_VISIBLE_DEVICES'), flush=True); time.sleep(1.0); "
            "print('end', time.time(), flush=True)")


def _run_fake_jobs(tmp_path, count, parallel, accelerators):
  """Runs `count` fake jobs; returns (the log lines, [(start, end, gpu)] per job)."""
  jobs = [sweep_lib.Job(sweep_lib.Point({}, name=f"p{i}"), 0, tmp_path / f"p{i}", None,
                        [sys.executable, "-c", FAKE_RUN]) for i in range(count)]
  lines = []
  outcome = sweep_lib.execute(jobs, parallel, log=lines.append, accelerators=accelerators)
  assert not outcome.failed, outcome.failed
  runs = []
  for job in jobs:
    words = {line.split()[0]: line.split()[1:] for line in
             job.log_path.read_text().splitlines() if line.startswith(("start", "end"))}
    runs.append((float(words["start"][0]), float(words["end"][0]), words["start"][1]))
  return lines, runs


def _most_at_once(runs) -> int:
  events = sorted([(start, 1) for start, _, _ in runs] + [(end, -1) for _, end, _ in runs],
                  key=lambda e: (e[0], e[1]))
  level = peak = 0
  for _, change in events:
    level += change
    peak = max(peak, level)
  return peak


def test_parallel_runs_on_gpus_get_one_each_and_no_more_than_there_are(tmp_path,
                                                                        monkeypatch):
  monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
  lines, runs = _run_fake_jobs(tmp_path, 4, 4, sweep_lib.Accelerators("gpu", ("0", "1")))
  assert _most_at_once(runs) == 2
  assert sorted(gpu for _, _, gpu in runs) == ["0", "0", "1", "1"]
  for a in runs:   # runs that overlap in time hold different GPUs
    for b in runs:
      if a is not b and a[0] < b[1] and b[0] < a[1]:
        assert a[2] != b[2], runs
  assert "--parallel 4 but 2 GPU(s): 2 runs at a time, one GPU each" in lines[0]


@pytest.mark.parametrize("accelerators, why", [
    (sweep_lib.Accelerators("gpu", ("0",)), "--parallel 3 but 1 GPU(s): the runs go one at "
                                            "a time, one GPU each"),
    (sweep_lib.Accelerators("tpu", ("/dev/accel0", "/dev/accel1")),
     "--parallel 3 on a TPU host (2 chip(s)): the runs go one at a time")])
def test_one_gpu_or_a_tpu_runs_the_jobs_one_at_a_time_and_says_why(tmp_path, monkeypatch,
                                                                    accelerators, why):
  monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
  lines, runs = _run_fake_jobs(tmp_path, 3, 3, accelerators)
  assert _most_at_once(runs) == 1
  assert lines[0].startswith(why), lines
  gpus = {gpu for _, _, gpu in runs}
  assert gpus == ({"0"} if accelerators.platform == "gpu" else {"None"})


def test_on_a_cpu_parallel_runs_go_at_once_with_the_environment_as_it_is(tmp_path,
                                                                          monkeypatch):
  monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
  lines, runs = _run_fake_jobs(tmp_path, 2, 2, sweep_lib.Accelerators())
  assert _most_at_once(runs) == 2
  assert {gpu for _, _, gpu in runs} == {"None"}
  assert all(line.startswith(("starting", "[")) for line in lines), lines


# Two points x two seeds of a tiny MLP on 512 MNIST images, 4 epochs. Each save pauses
# 0.4 s (a hook of tests/hooked_run.py, which the sweep's runs inherit with its
# environment), so a run takes a few seconds and can be stopped in its middle.
SWEEP = ["--config=experiments/mnist_mlp.py:smoke", "--seeds=2",
         '--grid={"model_kwargs.widths": [[16], [32]]}', "--config.num_epochs=4",
         "--config.eval_train=True", "--config.checkpoint_every_epochs=1"]


def _sweep_command(workdir, *extra):
  return [sys.executable, str(hooked_run.PATH), f"--workdir={workdir}", *SWEEP, *extra]


def _env(data_dir):
  return dict(os.environ, RESEARCH_DATA_DIR=str(data_dir), **{hooked_run.SAVE_PAUSE: "0.4"})


def _wait_for(condition, proc, timeout=240):
  deadline = time.time() + timeout
  while not condition():
    assert proc.poll() is None, proc.communicate()[0]
    assert time.time() < deadline, "timed out"
    time.sleep(0.05)


def test_killed_sweep_finishes_when_rerun_without_recomputing(data_dir, tmp_path):
  sweep_dir = tmp_path / "sweep"
  env = _env(data_dir)
  runs = {name: sweep_dir / name for name in
          ("widths=16/seed_0", "widths=16/seed_1", "widths=32/seed_0", "widths=32/seed_1")}

  # 1. Stop the sweep with SIGTERM while its third run is between checkpoints.
  proc = subprocess.Popen(_sweep_command(sweep_dir), cwd=REPO, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  third = runs["widths=32/seed_0"] / "checkpoints"
  _wait_for(lambda: third.is_dir() and any(p.name.isdigit() for p in third.iterdir()), proc)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == errors.Interrupted.EXIT_CODE, out
  finished = {n: (p / "summary.json").stat().st_mtime_ns for n, p in runs.items()
              if (p / "summary.json").exists()}
  assert sorted(finished) == ["widths=16/seed_0", "widths=16/seed_1"], out
  third_log = (runs["widths=32/seed_0"] / "output.log").read_text()
  assert "interrupted" in third_log
  assert "paused for 0.4s before commit" in third_log      # the runs have the hook

  # 2. The unfinished runs are plain command lines; run one by hand, as a scheduler would.
  printed = subprocess.run(_sweep_command(sweep_dir, "--print-commands"), cwd=REPO, env=env,
                           capture_output=True, text=True, check=True).stdout.splitlines()
  assert len(printed) == 2 and all("widths=32/seed_" in line for line in printed), printed
  by_hand = subprocess.run(printed[0], shell=True, cwd=REPO, env=env, capture_output=True,
                           text=True)
  assert by_hand.returncode == 0, by_hand.stderr
  assert "resuming from checkpoint step" in by_hand.stderr + by_hand.stdout

  # 3. Re-running the sweep runs only what is left.
  rerun = subprocess.run(_sweep_command(sweep_dir), cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
  assert rerun.returncode == 0, rerun.stdout + rerun.stderr
  assert "skipping 3 finished run(s)" in rerun.stdout
  assert rerun.stdout.count("starting ") == 1 and "widths=32/seed_1" in rerun.stdout
  for name, mtime in finished.items():
    assert (runs[name] / "summary.json").stat().st_mtime_ns == mtime, name
  for path in runs.values():  # no step was logged twice
    steps = [r["step"] for r in map(json.loads, (path / "metrics.jsonl").open())
             if r["split"] == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == 4 * 4

  # 4. The results hold the runs' own numbers.
  summaries = {n: json.loads((p / "summary.json").read_text()) for n, p in runs.items()}
  with open(sweep_dir / "results.csv") as f:
    table = list(csv.DictReader(f))
  assert len(table) == 4
  for row in table:
    summary = summaries[f"{row['point']}/seed_{row['seed']}"]
    for key in ("train_accuracy", "test_accuracy", "generalization_gap", "steps"):
      assert float(row[key]) == pytest.approx(summary[key], rel=1e-12), key
  markdown = (sweep_dir / "results.md").read_text()
  for point in ("widths=16", "widths=32"):
    test = [100 * summaries[f"{point}/seed_{s}"]["test_accuracy"] for s in (0, 1)]
    cell = f"{np.mean(test):.2f} ± {np.std(test, ddof=1):.2f}"
    assert f"| {point} | 2 |" in markdown and cell in markdown, (cell, markdown)
  for png in ("learning_curves.png", "test_accuracy.png", "gap.png"):
    data = (sweep_dir / png).read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 10_000, png


def test_a_point_builds_on_the_runs_of_another(tmp_path):
  teacher = sweep_lib.Point({}, name="teacher", seeds=1)
  student = sweep_lib.Point({"data_dir": "{sweep_dir}/teacher/seed_{seed}"},
                            name="student", after=("teacher",))
  jobs = _plan([teacher, student], tmp_path, seeds=2)
  assert [j.name for j in jobs] == ["teacher/seed_0", "student/seed_0", "student/seed_1"]
  assert jobs[2].config.data_dir == f"{tmp_path}/teacher/seed_1"
  assert f"--config.data_dir={tmp_path}/teacher/seed_1" in jobs[2].argv
  with pytest.raises(errors.ConfigError, match="'student' waits for \\['teacher'\\]"):
    sweep_lib.Sweep([student, teacher])


def test_runs_wait_for_their_prerequisites_and_skip_a_failed_one(tmp_path):
  def job(name, code, after=()):
    script = (f"import time; print('start', time.time()); time.sleep(0.5); "
              f"print('end', time.time(), flush=True); exit({code})")
    return sweep_lib.Job(sweep_lib.Point({}, name=name, after=after), 0, tmp_path / name,
                         None, [sys.executable, "-c", script])
  def time_of(name, event):
    lines = (tmp_path / name / "output.log").read_text().splitlines()
    return next(float(line.split()[1]) for line in lines if line.startswith(event))
  jobs = [job("a", 0), job("broken", 1), job("b", 0, ("a",)), job("c", 0, ("broken",))]
  lines = []
  outcome = sweep_lib.execute(jobs, 3, log=lines.append,
                              accelerators=sweep_lib.Accelerators())
  assert outcome.failed[0].startswith("broken/seed_0: crashed with exit code 1")
  assert outcome.failed[1:] == ["c/seed_0: not run, as broken/seed_0 did not finish"]
  assert not (tmp_path / "c").exists()
  assert time_of("b", "start") >= time_of("a", "end")
  assert time_of("broken", "start") < time_of("a", "end")   # independent runs overlap
