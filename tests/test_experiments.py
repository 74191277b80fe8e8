"""The experiment scripts' one vocabulary (experiments/common.py) and the one model
resolver (m2t_jax/model_source.py).

Every script under experiments/ is found by listing the folder, so a new script
is held to the same rules: it runs as ``python -m experiments.NAME``, edits no
sys.path, and every flag it has means what ``common.FLAGS`` says.
"""

import argparse
import datetime
import glob
import importlib
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from experiments import common
from m2t_jax import Codec, get_config, model_source, models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "experiments",
                                                                          "*.py"))
                 if os.path.basename(p) not in ("__init__.py", "common.py"))

# Runs each script as ``python -m`` would (runpy, run_name '__main__') with --help,
# in one fresh process started in the repository root (one import of JAX for all).
_HELP_ALL = """
import contextlib, io, json, runpy, sys, warnings
warnings.simplefilter("ignore")  # runpy: a module imported before by another script
codes = {}
for name in sys.argv[1:]:
  sys.argv = [name, "--help"]
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      runpy.run_module("experiments." + name, run_name="__main__", alter_sys=True)
    codes[name] = "returned without exiting"
  except SystemExit as e:
    codes[name] = e.code or 0
  except BaseException as e:
    codes[name] = f"{type(e).__name__}: {e}"
print(json.dumps(codes))
"""


def test_the_script_list_covers_the_folder():
  assert len(SCRIPTS) >= 18 and {"bench_decode", "bench_train", "rd_table"} <= set(SCRIPTS)


def test_every_script_answers_help_as_a_module():
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, "-c", _HELP_ALL, *SCRIPTS], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  codes = json.loads(proc.stdout.strip().splitlines()[-1])
  assert codes == {name: 0 for name in SCRIPTS}


@pytest.mark.parametrize("name", SCRIPTS)
def test_no_script_edits_sys_path(name):
  with open(os.path.join(ROOT, "experiments", f"{name}.py")) as f:
    assert "sys.path" not in f.read()


def _flags(parser: argparse.ArgumentParser):
  """(flag, action) of every optional argument but --help."""
  return [(flag, action) for action in parser._actions for flag in action.option_strings
          if flag not in ("-h", "--help")]


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_flag_of_every_script_has_its_one_meaning(name):
  module = importlib.import_module(f"experiments.{name}")
  assert hasattr(module, "build_parser"), f"experiments/{name}.py has no build_parser()"
  parser = module.build_parser()
  assert parser.prog == f"python -m experiments.{name}"
  problems = []
  for flag, action in _flags(parser):
    meaning = common.FLAGS.get(flag)
    if meaning is None:
      problems.append(f"{flag}: not in common.FLAGS")
    elif action.help != argparse.SUPPRESS and not action.help.startswith(meaning):
      problems.append(f"{flag}: help {action.help!r} does not start with its meaning")
    defaults = action.default if isinstance(action.default, list) else [action.default]
    if any(isinstance(d, str) and "experiments/results" in d for d in defaults):
      problems.append(f"{flag}: writes into the committed experiments/results by default")
  assert not problems, problems
  if "--output-dir" in dict(_flags(parser)):
    assert parser.get_default("output_dir") == os.path.join("out", name)


def test_the_flag_table_gives_each_step_count_its_own_name():
  # The names whose meaning once depended on the script.
  for old in ("--steps", "--out", "--output", "--checkpoint", "--config", "--val-dir",
              "--workdir", "--source", "--models", "--time-image-size", "--configs"):
    assert old not in common.FLAGS, old
  assert "decode steps" in common.FLAGS["--decode-steps"]
  assert common.FLAGS["--train-steps"] == "training steps"


# --- common: images, outputs and provenance ----------------------------------------


@pytest.fixture
def image_folder(tmp_path):
  folder = tmp_path / "images"
  (folder / "sub").mkdir(parents=True)
  for name, value in (("b.png", 10), ("a.png", 20), ("sub/c.JPG", 30)):
    Image.fromarray(np.full((4, 6, 3), value, np.uint8)).save(folder / name)
  (folder / "notes.txt").write_text("not an image")
  return str(folder)


def test_images_are_listed_recursively_and_filtered(image_folder):
  def args(**kw):
    return argparse.Namespace(images=image_folder, **kw)
  assert [os.path.relpath(p, image_folder) for p in common.image_paths(args())] == [
      "a.png", "b.png", "sub/c.JPG"]
  assert [os.path.relpath(p, image_folder) for p in common.image_paths(
      args(only=["sub/c.JPG", "a.png"]))] == ["sub/c.JPG", "a.png"]
  assert len(common.image_paths(args(max_images=2))) == 2
  loaded = common.load_images(args(only=["b.png"]))
  assert loaded[0][0] == "b.png" and loaded[0][1].shape == (4, 6, 3)
  assert loaded[0][1][0, 0, 0] == 10
  with pytest.raises(ValueError, match="--only.*missing.png"):
    common.image_paths(args(only=["missing.png"]))


def test_results_files_record_command_commit_device_and_date(tmp_path):
  p = common.parser("demo_study", "doc")
  common.add_output(p, "demo_study")
  args = common.parse(p, ["--output-dir", str(tmp_path), "--output-name", "r 1"])
  path = common.output_path(args, ".json")
  assert path == os.path.join(str(tmp_path), "r 1.json")
  common.write_json(path, {"value": float("nan")}, args, device_text="test device")
  doc = json.loads(open(path).read())
  assert doc["value"] is None  # strict JSON
  stamp = doc["provenance"]
  assert stamp["command"] == (f"python -m experiments.demo_study --output-dir {tmp_path} "
                              "--output-name 'r 1'")
  head = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True,
                        text=True, check=True).stdout.strip()
  assert re.fullmatch(f"{head}(-dirty)?", stamp["commit"])
  assert stamp["device"] == "test device"
  date = datetime.datetime.fromisoformat(stamp["date"])
  assert abs(datetime.datetime.now(datetime.timezone.utc) - date).total_seconds() < 600
  # A list of documents: each records it, the same for every file of one run.
  common.write_json(path, [{"a": 1}, {"b": 2}], args)
  docs = json.loads(open(path).read())
  assert [d["provenance"] for d in docs] == [stamp, stamp]
  with pytest.raises(TypeError, match="dict or a list of dicts"):
    common.write_json(path, [1, 2], args)


def test_a_script_writes_under_out_by_default(tmp_path, monkeypatch):
  from experiments import rd_table  # noqa: PLC0415
  curve = {"name": "anchor", "results": {"bpp": [0.1, 0.2, 0.4, 0.8],
                                         "psnr-rgb": [28.0, 30.5, 33.2, 36.0]}}
  (tmp_path / "anchor.json").write_text(json.dumps(curve))
  (tmp_path / "ours.json").write_text(json.dumps({**curve, "name": "ours"}))
  monkeypatch.chdir(tmp_path)
  assert rd_table.main(["ours.json", "--anchor", "anchor.json", "--references", "none"]) == 0
  doc = json.loads((tmp_path / "out" / "rd_table" / "rd_table.json").read_text())
  assert doc["rows"][0]["bd_rate_pchip"] == pytest.approx(0.0, abs=1e-6)
  assert doc["provenance"]["command"] == (
      "python -m experiments.rd_table ours.json --anchor anchor.json --references none")
  assert sorted(os.listdir(tmp_path / "out" / "rd_table")) == [
      "rd_table.json", "rd_table.md", "rd_table.png"]


# --- the model resolver ------------------------------------------------------------------


def _shipped_folder(name):
  with open(os.path.join(ROOT, "m2t_jax", "models", "manifest.json")) as f:
    entry = json.load(f)["models"][name]
  return os.path.join(ROOT, "m2t_jax", "models", entry["folder"])


def test_resolve_a_saved_model_folder_and_a_workdir(tmp_path):
  tiny = Codec.from_config(get_config("mt", "tiny"), seed=5)
  tiny.save(str(tmp_path / "saved"))
  source = model_source.resolve(str(tmp_path / "saved"))
  assert (source.form, source.path, source.note) == ("folder", str(tmp_path / "saved"), None)
  assert source.load().fingerprint == tiny.fingerprint
  # A finished training run: its exported model, and it says so.
  tiny.save(str(tmp_path / "run" / "model"))
  source = model_source.resolve(str(tmp_path / "run"))
  assert source.form == "workdir-model" and source.path == str(tmp_path / "run" / "model")
  assert "exported model" in source.note and source.label == str(tmp_path / "run")
  assert source.load(refine=3, max_pixels=100).fingerprint == tiny.fingerprint
  assert source.load(refine=3, max_pixels=100).max_pixels == 100


def test_resolve_a_shipped_name_a_kind_and_the_default():
  with open(os.path.join(ROOT, "m2t_jax", "models", "manifest.json")) as f:
    manifest = json.load(f)
  name = manifest["default"]
  source = model_source.resolve(name)
  assert (source.form, source.path) == ("shipped", _shipped_folder(name))
  assert model_source.resolve(None).path == _shipped_folder(name)
  assert model_source.resolve(None).label == name
  (mt_name,) = [n for n, e in manifest["models"].items() if e["kind"] == "mt"]
  source = model_source.resolve("mt")
  assert (source.form, source.path) == ("shipped", _shipped_folder(mt_name))


def test_resolve_kind_and_size_gives_random_weights():
  source = model_source.resolve("m2t:tiny", seed=2)
  assert (source.form, source.label, source.path) == ("random", "m2t:tiny (seed 2)", None)
  codec = source.load()
  assert codec.fingerprint == Codec.from_config(get_config("m2t", "tiny"), seed=2).fingerprint
  assert codec.fingerprint != model_source.resolve("m2t:tiny").load().fingerprint
  assert model_source.random_model("mt", seed=0).config.size == "paper"


def test_resolve_refuses_what_names_no_model(tmp_path):
  with pytest.raises(FileNotFoundError, match="not a saved model folder.*KIND:SIZE"):
    model_source.resolve("no-such-model")
  with pytest.raises(FileNotFoundError, match="not a saved model folder"):
    model_source.resolve(str(tmp_path / "missing"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="neither a saved model folder.*training "
                                              "workdir"):
    model_source.resolve(str(tmp_path / "empty"))
  with pytest.raises(ValueError, match="Unknown config size 'huge'"):
    model_source.resolve("m2t:huge")
  unshipped = [k for k in ("nested", "grouped", "m2t", "mt") if not models.names(k)]
  for kind in unshipped:  # a kind with no shipped model says so
    with pytest.raises(FileNotFoundError, match=f"No shipped model of kind '{kind}'"):
      model_source.resolve(kind)


def test_a_script_that_needs_one_kind_refuses_another():
  with pytest.raises(SystemExit, match="'mt:tiny': a m2t model is needed, not 'mt'"):
    common.load_model("mt:tiny", kind="m2t")
