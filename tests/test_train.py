"""Real training runs of m2t_jax.train in subprocesses: a config refused at
start, two pmap devices, MT eval of a workdir, SIGKILL/SIGTERM resume, two
processes with jax.distributed (the in-process checks: test_train_config.py).

The subprocesses share one persistent compilation cache, so only the first run
of each device topology pays for XLA compilation. The tiny config's crop is set
to 64 = 16 * patch_size (its 32 is not a whole latent patch, which training rejects).
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from PIL import Image

from m2t_jax import Codec, configs, train
from m2t_jax.app import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 60  # shared by the subprocess runs so that they share compilations


# --------------------------------------------------------------------------- #
# Fixtures and helpers.
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
  """scikit-image's astronaut, coffee and chelsea as PNG files."""
  import skimage.data  # noqa: PLC0415
  folder = tmp_path_factory.mktemp("photos")
  for name in ("astronaut", "coffee", "chelsea"):
    Image.fromarray(getattr(skimage.data, name)()).save(folder / f"{name}.png")
  return str(folder)


@pytest.fixture(scope="module")
def photos_and_bad_files(tmp_path_factory, photos):
  """The three photos, a truncated PNG and a text file named .png: what a new
  user's folder may hold."""
  folder = tmp_path_factory.mktemp("photos_and_bad_files")
  for name in os.listdir(photos):
    shutil.copy(os.path.join(photos, name), folder / name)
  content = (folder / "coffee.png").read_bytes()
  (folder / "trunc.png").write_bytes(content[:len(content) // 2])
  (folder / "notes.png").write_text("a text file, not an image")
  return str(folder)


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp("jax_cache"))


def _env(compile_cache, devices=2):
  env = dict(os.environ)
  env.update({
      "PYTHONPATH": REPO + os.pathsep + env.get("PYTHONPATH", ""),
      "JAX_PLATFORMS": "cpu",
      # Must be set before JAX initialises: hence subprocesses.
      "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
      "JAX_COMPILATION_CACHE_DIR": compile_cache,
      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
      "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
  })
  return env


def _train_cmd(workdir, photos, *overrides):
  return [sys.executable, "-m", "m2t_jax.train",
          "--config=m2t_jax/configs/m2t.py:tiny", f"--workdir={workdir}",
          "--config.crop_size=64", f"--config.num_steps={NUM_STEPS}",
          "--config.lmbda_warmup_factor=1.0",  # constant lambda: losses comparable
          # Smaller than tiny (one layer): compiles faster, and what these runs
          # test does not depend on depth.
          "--config.transformer.num_layers=1",
          f"--config.data.train_dir={photos}", *overrides]


def _run(cmd, env, timeout=300):
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=timeout, check=False)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc


def _records(workdir, kind="train"):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    lines = f.readlines()
  records = []
  for line in lines:
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:  # a line being written right now
      continue
  return [r for r in records if r["type"] == kind]


def _checkpoints(workdir):
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    return []
  return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


def _wait_for(predicate, proc, timeout=240, what=""):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return
    if proc.poll() is not None:
      raise AssertionError(f"Process ended (rc {proc.returncode}) before {what}:\n"
                           f"{proc.stderr.read()[-4000:]}")
    time.sleep(0.01)
  proc.kill()
  raise AssertionError(f"Timed out waiting for {what}.")


# --------------------------------------------------------------------------- #
# Subprocesses: real training runs.
# --------------------------------------------------------------------------- #


def test_cli_rejects_impossible_config_at_start(tmp_path, photos, compile_cache):
  proc = subprocess.run(
      _train_cmd(tmp_path / "w", photos, "--config.batch_size=3"), cwd=REPO,
      env=_env(compile_cache), capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode != 0
  assert "batch_size=3 cannot be split evenly over 2 devices" in proc.stderr
  assert not os.path.exists(tmp_path / "w" / "checkpoints")


def test_cli_ends_with_one_line_when_no_image_is_readable(tmp_path, compile_cache):
  bad = tmp_path / "bad"
  bad.mkdir()
  (bad / "notes.png").write_text("not an image")
  (bad / "empty.jpg").write_bytes(b"")
  proc = subprocess.run(_train_cmd(tmp_path / "w", str(bad)), cwd=REPO,
                        env=_env(compile_cache), capture_output=True, text=True,
                        timeout=120, check=False)
  assert proc.returncode == 1
  assert "Traceback" not in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("m2t_jax.train: error: No readable image under")
  assert "all 2 image files are unreadable" in last and "empty.jpg" in last
  assert not os.path.exists(tmp_path / "w" / "checkpoints")


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory, photos, photos_and_bad_files, compile_cache):
  """NUM_STEPS steps of the tiny config on two devices, in one go, on the three
  photos beside two unreadable files (skipped at the start: the stream is that
  of the photos alone, which the resume test compares with)."""
  workdir = str(tmp_path_factory.mktemp("uninterrupted") / "run")
  proc = _run(_train_cmd(workdir, photos_and_bad_files, "--config.log_every=1",
                         f"--config.data.val_dir={photos}",
                         f"--config.checkpoint_every={NUM_STEPS}"),
              _env(compile_cache))
  return workdir, proc.stderr


def test_tiny_training_on_two_devices_reduces_the_loss(uninterrupted_run):
  workdir, stderr = uninterrupted_run
  assert "on 2 device(s), 1 host(s)" in stderr
  records = _records(workdir)
  assert [r["step"] for r in records] == list(range(1, NUM_STEPS + 1))
  # The two unreadable files: one warning each, over 60 steps of 20 epochs, and
  # counted in every record.
  skipping = [line for line in stderr.splitlines() if "Skipping an unreadable" in line]
  assert len(skipping) == 2
  assert sum("trunc.png" in line for line in skipping) == 1
  assert sum("notes.png" in line for line in skipping) == 1
  assert all(r["skipped_files"] == 2 for r in records)
  losses = np.array([r["loss"] for r in records])
  assert np.isfinite(losses).all()
  first, last = losses[:10].mean(), losses[-10:].mean()
  assert last < 0.75 * first, (first, last)
  assert all(r["nonfinite_steps"] == 0 for r in records)
  for key in ("bpp", "psnr", "lmbda", "lr", "grad_norm", "steps_per_sec", "eta_s"):
    assert np.isfinite(records[-1][key]), key
  (evaluation,) = _records(workdir, "eval")
  assert evaluation["step"] == NUM_STEPS and evaluation["num_images"] == 3
  assert "bpp_one_pass" not in evaluation  # M2T's one pass is its schedule's rate
  assert 0 < evaluation["bpp"] < 10 and 0 < evaluation["psnr"] < 60
  assert _checkpoints(workdir) == [NUM_STEPS]
  # The codec's export of the final parameters.
  params = train.load_checkpoint(workdir)["params"]
  with np.load(os.path.join(workdir, "model", "params.npz")) as exported:
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    assert sorted(exported.files) == sorted("/".join(k.key for k in p) for p, _ in flat)
    for p, value in flat:
      np.testing.assert_array_equal(exported["/".join(k.key for k in p)], value)
  assert os.path.isfile(os.path.join(workdir, "model", "config.json"))


@pytest.fixture(scope="module")
def mt_run(tmp_path_factory, photos):
  """One step of a small MT (tiny with one residual block and one layer, to
  compile fast), in this process on one device, evaluated at the end on the
  photos' center crops; returns (workdir, config). Evaluated one image at a
  time: one 64 x 64 crop is one patch, the shapes Codec.estimate compiles for."""
  config = configs.get_config("mt", "tiny")
  config.crop_size = 64
  config.num_steps = config.checkpoint_every = 1
  config.eval_batch_size = 1
  config.data.train_dir = config.data.val_dir = photos
  config.transformer.num_layers = 1
  workdir = str(tmp_path_factory.mktemp("mt") / "run")
  train.train_and_evaluate(config, workdir)
  return workdir, config


def test_mt_eval_bpp_is_the_rate_of_its_schedule(mt_run, photos):
  # The logged eval bpp of MT is what Codec.estimate gives (the S-step decode
  # loop), recomputed here from the exported model on the same center crops;
  # the one-pass (all masked, S = 1) rate is logged apart and differs.
  workdir, config = mt_run
  (record,) = _records(workdir, "eval")
  codec = Codec.load(os.path.join(workdir, "model"))
  crops = []
  for name in sorted(os.listdir(photos)):
    image = np.asarray(Image.open(os.path.join(photos, name)))
    top, left = (image.shape[0] - 64) // 2, (image.shape[1] - 64) // 2
    crops.append(image[top:top + 64, left:left + 64])
  schedule = np.mean([codec.estimate(crop)["bpp"] for crop in crops])
  one_pass = jax.jit(lambda p, x: codec.model.apply({"params": p}, x)["bpp"])
  all_masked = np.mean(one_pass(codec.params, np.stack(crops).astype(np.float32)))
  assert record["num_images"] == 3
  assert record["bpp"] == pytest.approx(schedule, rel=1e-5)
  assert record["bpp_one_pass"] == pytest.approx(float(all_masked), rel=1e-5)
  assert abs(record["bpp"] - record["bpp_one_pass"]) > 3e-3 * schedule
  assert record["loss"] == pytest.approx(record["bpp"] + config.lmbda * record["mse"])


def test_m2t_eval_takes_a_training_workdir(mt_run, photos, tmp_path, capsys):
  # A workdir: its exported model, else (a copy without model/) its latest
  # checkpoint, the same parameters, hence the same bytes; a saved model folder
  # still works; a folder that is neither fails at once with a clear message.
  workdir, _ = mt_run
  images = tmp_path / "images"
  images.mkdir()
  Image.open(os.path.join(photos, "coffee.png")).crop((0, 0, 48, 32)).save(images / "a.png")
  no_model = str(tmp_path / "no_model")
  shutil.copytree(workdir, no_model, ignore=shutil.ignore_patterns("model"))

  def evaluate(*paths):
    output = str(tmp_path / "r.json")
    status = cli.main(["eval", "--images", str(images), "--checkpoint", *paths,
                       "--output", output, "--no-progress", "--no-warmup",
                       "--refine-steps", "0"])
    printed = capsys.readouterr()
    assert status == 0, printed.err
    with open(output) as f:
      return json.load(f)["results"], printed.out

  results, out = evaluate(workdir, os.path.join(workdir, "model"))
  assert f"{workdir}: a training workdir; using its exported model {workdir}/model" in out
  assert results["bpp"][0] == results["bpp"][1]
  results_ckpt, out = evaluate(no_model)
  assert "without an exported model; using its latest checkpoint (step 1)" in out
  assert results_ckpt["checkpoint"] == [f"{no_model} (step 1)"]
  assert results_ckpt["bpp"][0] == results["bpp"][0]
  assert results_ckpt["psnr-rgb"][0] == results["psnr-rgb"][0]
  neither = tmp_path / "neither"
  neither.mkdir()
  (neither / "config.json").write_text("{}")
  status = cli.main(["eval", "--images", str(images), "--checkpoint", str(neither),
                     "--output", str(tmp_path / "x.json")])
  err = capsys.readouterr().err
  assert status == 1 and "is neither a saved model folder" in err
  assert "training workdir" in err and not (tmp_path / "x.json").exists()


def test_resume_after_sigkill_and_sigterm_is_exact(tmp_path, photos, compile_cache,
                                                   uninterrupted_run):
  env = _env(compile_cache)
  # A: uninterrupted (evaluation does not touch the training state).
  run_a, _ = uninterrupted_run

  # B: checkpoints every 10 steps; SIGKILL once the one at step 10 exists.
  run_b = str(tmp_path / "b")
  cmd_b = _train_cmd(run_b, photos, "--config.log_every=1", "--config.checkpoint_every=10")
  proc = subprocess.Popen(cmd_b, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  _wait_for(lambda: 10 in _checkpoints(run_b), proc, what="checkpoint 10")
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL
  killed_at = _checkpoints(run_b)
  assert killed_at and max(killed_at) < NUM_STEPS, killed_at

  # B, resumed, then preempted with SIGTERM a few steps later: it must save
  # where it is and exit with status 0.
  resume_from = max(killed_at)
  lines_before = len(_records(run_b))
  proc = subprocess.Popen(cmd_b, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  _wait_for(lambda: any(r["step"] >= resume_from + 3
                        for r in _records(run_b)[lines_before:]),
            proc, what="steps after the resume")
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 0, stderr[-4000:]
  assert f"Resumed from the checkpoint at step {resume_from}" in stderr
  assert "Preemption (SIGTERM)" in stderr
  preempted_at = max(_checkpoints(run_b))
  assert resume_from + 3 <= preempted_at < NUM_STEPS, (resume_from, preempted_at)

  # B, resumed again, to the end.
  proc = _run(cmd_b, env)
  assert f"Resumed from the checkpoint at step {preempted_at}" in proc.stderr

  a = train.load_checkpoint(run_a, NUM_STEPS)
  b = train.load_checkpoint(run_b, NUM_STEPS)
  assert int(a["step"]) == int(b["step"]) == NUM_STEPS
  leaves_a, tree_a = jax.tree.flatten(a)
  leaves_b, tree_b = jax.tree.flatten(b)
  assert tree_a == tree_b
  for x, y in zip(leaves_a, leaves_b, strict=True):
    assert np.array_equal(x, y)  # params, optimizer state, counters: bitwise
  # The same data and noise at every step: identical per-step losses.
  loss_a = {r["step"]: r["loss"] for r in _records(run_a)}
  loss_b = {r["step"]: r["loss"] for r in _records(run_b)}  # later lines win
  assert loss_a == loss_b
  assert sorted(_checkpoints(run_b))[-1] == NUM_STEPS
  assert len(_checkpoints(run_b)) <= 3  # keep_checkpoints


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_with_jax_distributed(tmp_path, photos, compile_cache):
  """Two hosts on this machine (one CPU device each, gloo collectives), stopped
  by SIGTERM as a scheduler would: both reach JAX's preemption sync point, save
  one checkpoint together and exit with status 0."""
  workdir = str(tmp_path / "multi")
  env = _env(compile_cache, devices=1)
  port = _free_port()
  procs = [subprocess.Popen(
      _train_cmd(workdir, photos, "--config.num_steps=100000", "--config.log_every=1",
                 "--config.checkpoint_every=3", f"--coordinator_address=localhost:{port}",
                 "--num_processes=2", f"--process_id={i}"),
      cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  _wait_for(lambda: len(_records(workdir)) >= 7, procs[0], what="7 steps")
  for p in procs:
    p.send_signal(signal.SIGTERM)
  outputs = [p.communicate(timeout=120)[1] for p in procs]
  for p, err in zip(procs, outputs, strict=True):
    assert p.returncode == 0, err[-4000:]
    assert "Preemption (SIGTERM): saved the checkpoint" in err
  assert "on 2 device(s), 2 host(s)" in outputs[0]
  assert "process 1 of 2" in outputs[1]
  records = _records(workdir)  # written by host 0 only
  last = records[-1]["step"]
  assert [r["step"] for r in records] == list(range(1, last + 1))
  assert all(np.isfinite(r["loss"]) for r in records)
  checkpoints = _checkpoints(workdir)
  # Every 3 steps, plus the preemption's; the last keep_checkpoints=3 kept.
  assert checkpoints[-1] == last and len(checkpoints) == 3
  assert all(c % 3 == 0 for c in checkpoints[:-1])
  data_dir = os.path.join(workdir, "checkpoints", str(last), "data")
  states = sorted(f for f in os.listdir(data_dir) if f.endswith(".json"))
  assert states == ["process_0-of-2.json", "process_1-of-2.json"]
  # Each host consumed one batch of its own shard per step (one crop each).
  for name in states:
    with open(os.path.join(data_dir, name)) as f:
      assert json.load(f)["next_index"] == last
