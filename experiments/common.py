"""The one command-line vocabulary of the experiment scripts, and their results files.

Every script is run as ``python -m experiments.NAME`` from the repository root,
exposes ``build_parser()`` (its argparse parser) and ``main(argv=None)``, and
takes its flags from ``FLAGS``: one name, one meaning, in every script
(``tests/test_experiments.py`` holds every script's parser to this table). A
script may add a detail to a flag's help (``add(..., detail=...)``), never
another meaning; a flag that is not in the table is added to it first.

A script's parser, in a few lines::

    from experiments import common

    def build_parser():
      p = common.parser("my_study", __doc__)
      common.add(p, "--model", default="m2t:tiny")
      common.add(p, "--images", required=True)
      common.add(p, "--decode-steps", type=int, nargs="+", default=[4, 8])
      common.add_output(p, "my_study")          # --output-dir, --output-name
      return p

    def main(argv=None):
      args = common.parse(build_parser(), argv)
      codec = common.load_model(args.model)     # m2t_jax.model_source.resolve
      photos = common.load_images(args)         # m2t_jax.images, --only, --max-images
      ...
      common.write_json(common.output_path(args, ".json"), {"rows": rows}, args)

Outputs go to ``--output-dir`` (default ``out/<script>/``), named
``<--output-name><suffix>`` (default stem: the script's name). The committed
``experiments/results/`` files are written only when that folder is given
explicitly; ``experiments/results/README.md`` says which command wrote each.

Every results JSON records where it came from (``provenance``): the command
(``python -m experiments.NAME ARGS``), the commit (``-dirty`` when tracked files
differ from it), the device and the date (UTC, ISO 8601), under the key
``"provenance"`` (``write_json`` adds it).
"""

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Flag -> its one meaning. Help texts start with it (``add``).
FLAGS = {
    # --- what to run on -------------------------------------------------------
    "--model": "the model: a saved-model folder, a training workdir, a shipped name "
               "(e.g. grouped-small-l0.0025), a kind (e.g. m2t: its shipped model) or "
               "KIND:SIZE (e.g. m2t:tiny: random weights), as m2t_jax.model_source "
               "resolves it",
    "--images": "folder of images (PNG/JPEG, searched recursively, as "
                "m2t_jax.images.list_images lists them)",
    "--only": "only these files of --images (names relative to it)",
    "--split": "only this fixed split of --images (m2t_jax.evaluation.splits, by file "
               "name: val decides choices, test is only measured; all: every file)",
    "--max-images": "only the first N images (0: all)",
    "--image": "one image file",
    "--image-size": "WxH of the photo the timings run on (a tiled photo)",
    "--train-dir": "folder of training images",
    "--kinds": "entropy-model kinds (names of m2t_jax.entropy.registry; default: all)",
    "--kind": "one entropy-model kind (a name of m2t_jax.entropy.registry)",
    "--size": "config size: paper, small or tiny",
    "--sizes": "config sizes: paper, small, tiny",
    "--entropy-models": "entropy models to train, each KIND[:S=n][:field=value...] on "
                        "the --size config (S: config.schedule.num_steps)",
    "--variants": "decode variants of a kind, KIND=NAME,NAME (size schedules)",
    "--size-schedules": "size schedules of a nested model: names (full, fast, smallest) "
                        "or exits per decode step (2,2,1,0)",
    "--weights": "weights of the timed models: random or shipped",
    # --- steps ------------------------------------------------------------------
    "--decode-steps": "numbers of decode steps S (config.schedule.num_steps)",
    "--mt-decode-steps": "numbers of decode steps S at which MT models are coded",
    "--train-steps": "training steps",
    "--train-steps-before": "training steps of the model a run was warm-started from "
                            "(config.init_from)",
    "--eval-steps": "training steps whose checkpoints are evaluated",
    "--warmup-steps": "learning-rate warm-up steps of training",
    "--untimed-steps": "steps run before timing starts (after compilation)",
    # --- training ---------------------------------------------------------------
    "--batch-size": "global training batch size",
    "--crop-size": "training crop side in pixels",
    "--learning-rate": "peak learning rate of training",
    "--dtypes": "compute dtypes (config.compute_dtype): float32, bfloat16",
    "--runs-dir": "folder of the script's training workdirs, one per model (a rerun "
                  "resumes them)",
    "--skip-train": "train nothing; evaluate the checkpoints that exist",
    # --- measurement ------------------------------------------------------------
    "--repeats": "timed repetitions of each measurement (the median is reported)",
    "--seed": "seed of the script's random choices",
    "--peak-tflops": "peak TFLOP/s per device, for the model FLOPs utilisation",
    "--decode-rss": "also measure a decode-only process's peak memory",
    "--no-progress": "no progress bar",
    # --- outputs ----------------------------------------------------------------
    "--output-dir": "folder the outputs are written into (the committed results only "
                    "when it is experiments/results)",
    "--output-name": "file-name stem of the outputs in --output-dir",
    # --- one script each ----------------------------------------------------------
    "--quick": "tiny configs, small images and long limits: a CPU check of the script",
    "--section": "internal: the section a child process runs",
    "--result": "internal: the JSON file a child process writes its result to",
    "--tmp": "internal: the scratch folder shared by the child processes",
    "--cells": "side of the decoded latent windows, in latent cells",
    "--margins": "border widths left out of the window's score, in latent cells",
    "--depths": "numbers of transformer blocks kept",
    "--alphas": "QLDS schedule exponents alpha (config.schedule.alpha)",
    "--orders": "decode orders of the schedule: qlds, random, entropy",
    "--measure": "size schedules decoded for real (names or exits per step)",
    "--settings": "encoder-side refinement settings, each STEPS:LEARNING_RATE:RATE_TARGET",
    "--efforts": "encoder effort levels (m2t_jax.refine.EFFORTS; 0: E's latent)",
    "--mutations": "number of mutated streams decoded",
    "--time-limit": "seconds each decode may take",
    "--codecs": "classical codecs: jpeg, webp, avif",
    "--qualities": "codec quality settings, one sweep for every codec",
    "--variable-model": "a variable-rate model (m2t_jax.model: one model for every "
                        "quality), the same forms as --model",
    "--max-side": "downsize images whose longer side exceeds this many pixels (0: never)",
    "--dataset": "folder of third_party/rd_curves with the published curves",
    "--anchor": "the BD-rate anchor: a curve name in --dataset's folder, or a results file",
    "--references": "published curves drawn beside ours: default, all, none or "
                    "names/paths",
    "--per-image": "also the BD-rate photo by photo (from the per-image files)",
    "--name": "the shipped model's name (the manifest key)",
    "--remeasure": "measure the shipped model of this name again",
    "--data": "the training data, as the manifest describes it",
    "--hours": "training hours, for the manifest",
    "--device": "the machine the model was trained on, as the manifest describes it",
    "--default": "make this the default shipped model",
}


def parser(script: str, doc: str) -> argparse.ArgumentParser:
  """An ArgumentParser for ``python -m experiments.<script>``, ``doc`` (the
  module docstring) as its description."""
  p = argparse.ArgumentParser(prog=f"python -m experiments.{script}", description=doc,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.set_defaults(script=script)  # for the default output paths and the provenance
  return p


def add(p: argparse.ArgumentParser, flag: str, detail: str | None = None,
        hidden: bool = False, **kwargs) -> argparse.Action:
  """Adds ``flag`` with its ``FLAGS`` meaning as help (plus '; ' ``detail``);
  kwargs go to ``add_argument``. KeyError for a flag missing from ``FLAGS``."""
  meaning = FLAGS[flag]
  text = argparse.SUPPRESS if hidden else meaning + (f"; {detail}" if detail else "")
  if not hidden and "default" in kwargs and kwargs["default"] not in (None, False, []):
    text += " (default: %(default)s)"
  return p.add_argument(flag, help=text, **kwargs)


def add_output(p: argparse.ArgumentParser, script: str) -> None:
  """``--output-dir`` (default ``out/<script>``) and ``--output-name`` (default
  ``script``)."""
  add(p, "--output-dir", default=os.path.join("out", script))
  add(p, "--output-name", default=script)


def parse(p: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
  """``p.parse_args(argv)``, the arguments kept as ``args.argv`` for the
  provenance (None: ``sys.argv[1:]``)."""
  argv = list(sys.argv[1:] if argv is None else argv)
  args = p.parse_args(argv)
  args.argv = argv
  return args


def output_path(args: argparse.Namespace, suffix: str) -> str:
  """``<output_dir>/<output_name><suffix>`` (e.g. suffix '.json'), its folder
  created."""
  os.makedirs(args.output_dir, exist_ok=True)
  return os.path.join(args.output_dir, args.output_name + suffix)


# --- models and images ------------------------------------------------------------


def resolve_model(spec: str | None):
  """``m2t_jax.model_source.resolve(spec)``, printing which part of a workdir
  is used. Raises FileNotFoundError / ValueError for a spec that names nothing."""
  from m2t_jax import model_source  # noqa: PLC0415 - --help stays fast
  source = model_source.resolve(spec)
  if source.note:
    print(source.note, file=sys.stderr, flush=True)
  return source


def load_model(spec: str | None, kind: str | None = None, **load_kwargs):
  """The Codec of ``--model`` (``resolve_model(spec).load(**load_kwargs)``);
  SystemExit when ``kind`` is given and the model is of another kind."""
  codec = resolve_model(spec).load(**load_kwargs)
  if kind is not None and codec.config.model != kind:
    raise SystemExit(f"--model {spec!r}: a {kind} model is needed, not "
                     f"{codec.config.model!r}")
  return codec


def image_paths(args: argparse.Namespace) -> list[str]:
  """The files of ``args.images`` (``images.list_images``: recursive, sorted),
  restricted to ``args.only`` (in its order) and ``args.max_images`` where the
  script has those flags. Raises FileNotFoundError / ValueError for a missing or
  empty folder or a name of --only that is not in it."""
  from m2t_jax import images  # noqa: PLC0415
  paths = images.list_images(args.images)
  only = getattr(args, "only", None)
  if only:
    by_name = {os.path.relpath(p, args.images): p for p in paths}
    missing = [n for n in only if n not in by_name]
    if missing:
      raise ValueError(f"--only: {missing} not among the images of {args.images!r}.")
    paths = [by_name[n] for n in only]
  limit = getattr(args, "max_images", 0) or 0
  return paths[:limit] if limit > 0 else paths


def load_images(args: argparse.Namespace) -> list[tuple[str, "object"]]:
  """[(name relative to --images, RGB uint8 (H, W, 3))] of ``image_paths(args)``,
  read by ``images.read_rgb``."""
  from m2t_jax import images  # noqa: PLC0415
  return [(os.path.relpath(p, args.images), images.read_rgb(p)[0])
          for p in image_paths(args)]


# --- provenance ---------------------------------------------------------------------


def command(args: argparse.Namespace) -> str:
  """The command line that ran the script: ``python -m experiments.NAME ARGS``."""
  return " ".join(["python", "-m", f"experiments.{args.script}",
                   *map(shlex.quote, args.argv)])


def commit() -> str | None:
  """HEAD of the repository, with '-dirty' when tracked files differ from it;
  None outside a git checkout."""
  def git(*cmd):
    return subprocess.run(["git", "-C", ROOT, *cmd], capture_output=True, text=True,
                          check=True).stdout.strip()
  try:
    head = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
  except (OSError, subprocess.CalledProcessError):
    return None
  return head + ("-dirty" if dirty else "")


def device() -> str:
  """The device JAX computes on: kind, count, platform, CPU cores and JAX
  version. Initialises JAX's backend (a parent process that must leave the
  accelerator to its children passes ``device=`` to ``write_json`` instead)."""
  import jax  # noqa: PLC0415
  d = jax.devices()[0]
  return (f"{d.device_kind} x{jax.device_count()} ({d.platform}), {os.cpu_count()} CPU "
          f"cores, JAX {jax.__version__}")


def provenance(args: argparse.Namespace, device_text: str | None = None) -> dict:
  """{'command', 'commit', 'device', 'date'} of this run (``device_text``: the
  device, when the caller knows it without asking JAX). Taken once per run (kept
  on ``args``), so that every file of a run records the same."""
  if getattr(args, "provenance", None) is None:
    args.provenance = {
        "command": command(args), "commit": commit(),
        "device": device_text if device_text is not None else device(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
  return args.provenance


def write_json(path: str, doc, args: argparse.Namespace, device_text: str | None = None,
               indent: int = 1) -> None:
  """Writes ``doc`` (a dict, or a list of dicts) as JSON with the run's
  ``provenance`` added under "provenance" (to each dict of a list), its folder
  created. Strict JSON: NaN and infinities become null."""
  from m2t_jax.evaluation import rd  # noqa: PLC0415
  stamp = provenance(args, device_text)
  if isinstance(doc, dict):
    doc = {**doc, "provenance": stamp}
  elif isinstance(doc, list) and all(isinstance(d, dict) for d in doc):
    doc = [{**d, "provenance": stamp} for d in doc]
  else:
    raise TypeError(f"write_json takes a dict or a list of dicts, not {type(doc).__name__}.")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(rd.finite_or_none(doc), f, indent=indent, allow_nan=False)
    f.write("\n")
