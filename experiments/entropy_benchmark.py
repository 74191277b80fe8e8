"""Entropy-model benchmark: every kind trained for the same steps and batch on the
same latents (one frozen autoencoder), ranked by real bytes.

  python -m experiments.entropy_benchmark --model m2t-small-l0.0025 \
      --train-dir TRAIN --images VAL --train-steps 2000 --eval-steps 250 500 1000 2000 \
      [--runs-dir workdirs/entropy_benchmark] \
      [--output-dir out/entropy_benchmark] [--output-name entropy_benchmark]

--model is the source of the frozen autoencoder (a saved-model folder or a
shipped name, which the trainer's config.init_from reads). Each entry of
--entropy-models is ``kind[:S=n][:field=value...]`` on the --size config
(``m2t:S=4`` sets schedule.num_steps = 4 for training and coding; MT is trained
once with random masks and coded at every S of --mt-decode-steps). Each is trained with
``python -m m2t_jax.train --config.train_part=entropy --config.init_from=MODEL``
(``m2t_jax/train/frozen.py``) in its own workdir under --runs-dir, so an
interrupted benchmark resumes where it stopped and a finished model is not
trained again (nor evaluated again: ``workdir/eval_STEP.json``; the outputs are
rewritten after every model). All models then code the *same* y_hat: their reconstructions are
identical (checked: ``same_reconstruction``) and their bytes alone rank them.

For every model and every --eval-steps checkpoint: real bytes of every
validation photo (bpp per photo, mean, min/max), Δ% vs MT at the same S; at the
last step also the transformer decode time (decode steps alone) and the full
decode time of the first validation photo, XLA FLOPs of the decode steps per
image, and the entropy model's parameter count. The ranking at each evaluated
step, its Kendall's tau against the last step's order and the first step from
which the order no longer changes show how many steps the ranking needs; per
photo wins of each adjacent pair say how firmly the last order holds. Writes
JSON, a markdown table (.md) and a bpp-vs-decode-time plot (.png), each
``<output-name>.*`` in ``--output-dir``.

A kind may offer decode variants through ``EntropyCoder.compress(...,
size_schedule=...)`` (nested M2T); pass them as ``--variants kind=name,name``.
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
from scipy.stats import kendalltau

from experiments import bench_decode, common
from m2t_jax import Codec, train
from m2t_jax.entropy import patches


def parse_model(spec: str) -> tuple[str, dict]:
  """'m2t:S=4:gmm.num_mixtures=5' -> ('m2t', {'schedule.num_steps': '4', ...})."""
  kind, *fields = spec.split(":")
  overrides = {}
  for field in fields:
    key, _, value = field.partition("=")
    if not value:
      raise SystemExit(f"--entropy-models {spec!r}: expected key=value after the kind")
    overrides["schedule.num_steps" if key == "S" else key] = value
  return kind, overrides


def train_model(spec, args, workdir) -> None:
  """Trains (or resumes) one model; does nothing when its last step exists."""
  kind, overrides = parse_model(spec)
  if train.latest_step(workdir) == args.train_steps:
    return
  every = int(np.gcd.reduce(args.eval_steps))
  cmd = [sys.executable, "-m", "m2t_jax.train",
         f"--config=m2t_jax/configs/{kind}.py:{args.size}", f"--workdir={workdir}",
         "--config.train_part=entropy", f"--config.init_from={args.model}",
         # Every kind's entropy model starts from its initial values: the source's
         # own entropy model would give its kind (and MT, which shares names) a
         # head start. Only the frozen autoencoder comes from --source.
         "--config.init_entropy_model=False",
         f"--config.data.train_dir={args.train_dir}", f"--config.num_steps={args.train_steps}",
         f"--config.batch_size={args.batch_size}",
         f"--config.learning_rate={args.learning_rate}",
         f"--config.warmup_steps={args.warmup_steps}",
         f"--config.checkpoint_every={every}",
         # every checkpoint (gcd spacing), so each evaluated step is still there
         f"--config.keep_checkpoints={args.train_steps // every + 1}",
         "--config.eval_every=0", "--config.log_every=50",
         *(f"--config.{k}={v}" for k, v in overrides.items())]
  print("+", " ".join(cmd), file=sys.stderr, flush=True)
  t0 = time.time()
  proc = subprocess.Popen(cmd, cwd=common.ROOT)
  # A SIGTERM to the benchmark reaches its trainer, which saves and exits;
  # without this the trainer would run on, orphaned, after the benchmark died.
  previous = signal.signal(signal.SIGTERM,
                           lambda *_: proc.send_signal(signal.SIGTERM))
  try:
    returncode = proc.wait()
  finally:
    signal.signal(signal.SIGTERM, previous)
  if returncode != 0:
    raise SystemExit(f"Training {spec!r} failed (exit status {returncode}).")
  with open(os.path.join(workdir, "train_time.json"), "a") as f:  # one line per run
    f.write(json.dumps({"seconds": time.time() - t0, "device": jax.devices()[0].device_kind})
            + "\n")
  if train.latest_step(workdir) != args.train_steps:  # preempted: saved, not done
    raise SystemExit(f"Training {spec!r} stopped at step {train.latest_step(workdir)}"
                     f" of {args.train_steps}; the same command resumes it.")


def saved_steps(workdir) -> list[int]:
  if train.latest_step(workdir) is None:
    return []
  manager = train.checkpoint_manager(workdir)
  try:
    return list(manager.all_steps())
  finally:
    manager.close()


def decode_flops(codec, valid, variant=None) -> float | None:
  """XLA's FLOPs of the decode steps (decode_step only) for patches ``valid``
  (with size schedule ``variant`` for a nested model)."""
  model = codec.entropy_coder.scheduled(variant)
  params = codec.params["entropy_model"]
  fn = jax.jit(lambda p, s, i, shape: model.apply({"params": p}, s, i, shape,
                                                 method="decode_step"),
               static_argnums=3)
  state, total = model.init_decode_state(valid), 0.0
  for i, planned in enumerate(model.coding_plan()):
    step = (np.int32(i), model.step_shape(i))
    cost = fn.lower(params, state, *step).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    if not cost or "flops" not in cost:
      return None
    total += float(cost["flops"])
    cells, _, state = fn(params, state, *step)
    if planned.cells is not None:
      cells = np.broadcast_to(planned.cells, (valid.shape[0], planned.size))
    else:
      cells = np.asarray(cells)[:, :planned.size]
    values = np.zeros((valid.shape[0], planned.size, planned.num_channels), np.float32)
    state = model.decode_update(state, i, cells, values)
  return total


def evaluate(codec, photos, variant=None) -> dict:
  """Real bytes of each photo: {'bpp': [...], 'bytes': [...], 'y_hat_crc': [...]}."""
  out = {"bpp": [], "bytes": []}
  for _, image in photos:
    data = (codec.compress(image) if variant is None
            else codec.compress(image, size_schedule=variant))
    out["bytes"].append(len(data))
    out["bpp"].append(8 * len(data) / (image.shape[0] * image.shape[1]))
  return out


def timings(codec, image, repeats: int, variant=None) -> dict:
  data = (codec.compress(image) if variant is None
          else codec.compress(image, size_schedule=variant))
  codec.decompress(data)  # compile
  full = bench_decode._median_time(lambda: codec.decompress(data), repeats)
  y_hat = codec.analyze(image)
  tokens, valid = patches.to_patches(np.asarray(y_hat, np.float32),
                                     codec.config.patch_size)
  valid = np.asarray(valid)
  run = bench_decode._transformer_fn(codec, tokens, valid, variant)
  jax.block_until_ready(run())
  return {"full_decode_s": full,
          "transformer_s": bench_decode._median_time(run, repeats),
          "decode_flops": decode_flops(codec, valid, variant),
          "reconstruction": codec.decompress(data)}


def rows_for(spec, args, workdir, photos, final: bool, step: int, variants) -> list:
  kind, _ = parse_model(spec)
  config, params = train.checkpoint_model(workdir, step)
  steps_list = args.mt_decode_steps if kind == "mt" else [config.schedule.num_steps]
  rows = []
  for s in steps_list:
    config.schedule.num_steps = s
    codec = Codec(config, params)
    for variant in variants.get(kind, [None]):
      result = evaluate(codec, photos, variant)
      row = {"model": spec, "kind": kind, "S": s, "variant": variant, "step": step,
             "bpp_per_photo": result["bpp"], "bpp": float(np.mean(result["bpp"])),
             "bpp_min": min(result["bpp"]), "bpp_max": max(result["bpp"]),
             "entropy_params": int(sum(np.size(x) for x in
                                       jax.tree.leaves(params["entropy_model"])))}
      if final:
        row.update(timings(codec, photos[0][1], args.repeats, variant))
      rows.append(row)
      print(json.dumps({k: v for k, v in row.items() if k != "reconstruction"}),
            file=sys.stderr, flush=True)
  return rows


def _name(row) -> str:
  return (f"{row['model']}" + (f" S={row['S']}" if row["kind"] == "mt" else "")
          + (f" [{row['variant']}]" if row["variant"] else ""))


def ranking_stability(rows, steps) -> dict:
  """How the order by mean bpp changes over the evaluated ``steps``.

  Only entries (model, S, variant) evaluated at every step take part, so that
  each step ranks the same set. Returns ``{"entries": [...], "per_step": [{"step",
  "tau", "flipped"}], "settled_at": step}``: ``tau`` is Kendall's tau between the
  order at that step and at the last step (1.0 = the same order), ``flipped`` the
  pairs ordered the other way, ``settled_at`` the first step from which every later
  step has the last step's order (the last step itself when the order changed
  there). An empty dict when fewer than two steps or two entries exist.
  """
  bpp = {}
  for r in rows:
    bpp.setdefault(_name(r), {})[r["step"]] = r["bpp"]
  steps = sorted(steps)
  names = sorted(n for n, by_step in bpp.items() if all(s in by_step for s in steps))
  if len(steps) < 2 or len(names) < 2:
    return {}
  last = [bpp[n][steps[-1]] for n in names]
  per_step = []
  for s in steps:
    at = [bpp[n][s] for n in names]
    flipped = [f"{a} / {b}" for i, a in enumerate(names) for b in names[i + 1:]
               if (bpp[a][s] - bpp[b][s]) * (bpp[a][steps[-1]] - bpp[b][steps[-1]]) < 0]
    per_step.append({"step": s, "tau": float(kendalltau(at, last).statistic),
                     "flipped": flipped})
  settled_at = steps[-1]
  for entry in reversed(per_step):
    if entry["flipped"]:
      break
    settled_at = entry["step"]
  return {"entries": names, "per_step": per_step, "settled_at": settled_at}


def photo_wins(rows, step) -> list[str]:
  """For each pair adjacent in the order at ``step``: on how many validation photos
  the better-ranked entry codes fewer bytes, e.g. "m2t:S=12 < mt S=12: 5/6 photos"."""
  at = sorted((r for r in rows if r["step"] == step), key=lambda r: r["bpp"])
  def wins(a, b):
    return sum(x < y for x, y in zip(a["bpp_per_photo"], b["bpp_per_photo"], strict=True))
  return [f"{_name(a)} < {_name(b)}: {wins(a, b)}/{len(a['bpp_per_photo'])} photos"
          for a, b in zip(at, at[1:], strict=False)]


def markdown(rows, photos, args) -> str:
  last = [r for r in rows if r["step"] == max(args.eval_steps)]
  mt = {r["S"]: r["bpp"] for r in last if r["kind"] == "mt"}
  lines = [f"Validation photos: {', '.join(n for n, _ in photos)}; {args.train_steps} steps "
           f"of batch {args.batch_size} on the latents of {args.model}.", "",
           "| model | S | bpp (mean) | min..max | Δ vs MT same S | transformer s (photo 1) | "
           "full decode s (photo 1) | decode GFLOPs (photo 1) | entropy params |",
           "|---|---|---|---|---|---|---|---|---|"]
  for r in sorted(last, key=lambda r: r["bpp"]):
    delta = (f"{100 * (r['bpp'] / mt[r['S']] - 1):+.2f}%" if r["S"] in mt else "")
    flops = f"{r['decode_flops'] / 1e9:.2f}" if r.get("decode_flops") else ""
    lines.append(f"| {_name(r)} | {r['S']} | {r['bpp']:.4f} | {r['bpp_min']:.3f}.."
                 f"{r['bpp_max']:.3f} | {delta} | {r.get('transformer_s', 0):.3f} | "
                 f"{r.get('full_decode_s', 0):.3f} | {flops} | {r['entropy_params']:,} |")
  lines += ["", "Ranking (best first) at each evaluated step:", ""]
  for step in args.eval_steps:
    at = sorted((r for r in rows if r["step"] == step), key=lambda r: r["bpp"])
    if not at:
      continue
    lines.append(f"- step {step}: " + " < ".join(f"{_name(r)} {r['bpp']:.4f}" for r in at))
  stability = ranking_stability(rows, [s for s in args.eval_steps
                                       if any(r["step"] == s for r in rows)])
  if stability:
    lines += ["", f"Order vs the last evaluated step (Kendall's tau; {len(stability['entries'])}"
              " entries evaluated at every step):", ""]
    lines += [f"- step {e['step']}: tau {e['tau']:+.2f}"
              + (f"; flipped: {', '.join(e['flipped'])}" if e["flipped"] else "")
              for e in stability["per_step"]]
    lines += ["", f"The order is the last step's from step {stability['settled_at']} on."]
    lines += ["", "Adjacent pairs at the last step, photos won by the better one:", ""]
    lines += [f"- {w}" for w in photo_wins(rows, max(e["step"] for e in stability["per_step"]))]
  return "\n".join(lines) + "\n"


def plot(rows, path, last_step):
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    return
  fig, ax = plt.subplots(figsize=(6, 4))
  for r in rows:
    if r["step"] == last_step and "full_decode_s" in r:
      ax.scatter(r["full_decode_s"], r["bpp"])
      ax.annotate(_name(r), (r["full_decode_s"], r["bpp"]), fontsize=7)
  ax.set_xlabel("full decode time of the first validation photo (s)")
  ax.set_ylabel("bpp (real bytes, mean over validation photos)")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def build_parser():
  p = common.parser("entropy_benchmark", __doc__)
  common.add(p, "--model", required=True,
             detail="its frozen autoencoder gives the latents (a saved-model folder or a "
                    "shipped name: the trainer's config.init_from)")
  common.add(p, "--train-dir", required=True)
  common.add(p, "--images", required=True, detail="the validation photos")
  common.add(p, "--entropy-models", nargs="+", default=[
      "mt", "m2t:S=4", "m2t:S=8", "m2t:S=12", "grouped", "nested"])
  common.add(p, "--variants", nargs="*", default=["nested=full,fast"])
  common.add(p, "--mt-decode-steps", nargs="+", type=int, default=[4, 8, 12])
  common.add(p, "--size", default="small")
  common.add(p, "--train-steps", type=int, default=2000)
  common.add(p, "--eval-steps", nargs="+", type=int, default=None,
             detail="default: --train-steps")
  common.add(p, "--batch-size", type=int, default=16)
  common.add(p, "--learning-rate", type=float, default=3e-4)
  common.add(p, "--warmup-steps", type=int, default=100)
  common.add(p, "--repeats", type=int, default=3)
  common.add(p, "--runs-dir", default="workdirs/entropy_benchmark")
  common.add(p, "--skip-train", action="store_true")
  common.add_output(p, "entropy_benchmark")
  return p


def main(argv=None):
  args = common.parse(build_parser(), argv)
  form = common.resolve_model(args.model).form  # fails now, not after hours of training
  if form not in ("folder", "shipped"):
    raise SystemExit(f"--model {args.model!r}: the trainer's config.init_from takes a "
                     f"saved-model folder or a shipped name, not a {form} model")
  args.eval_steps = sorted(set(args.eval_steps or [args.train_steps]) | {args.train_steps})
  variants = {}
  for item in args.variants:
    kind, _, names = item.partition("=")
    variants[kind] = names.split(",")
  photos = common.load_images(args)
  rows = []
  for spec in args.entropy_models:
    workdir = os.path.join(args.runs_dir, spec.replace(":", "_").replace("=", ""))
    if not args.skip_train:
      train_model(spec, args, workdir)
    for step in args.eval_steps:
      if step in saved_steps(workdir):
        rows += evaluated_rows(spec, args, workdir, photos, step, variants)
    write_outputs(rows, photos, args)  # after every model: a stopped run keeps them


def evaluated_rows(spec, args, workdir, photos, step, variants) -> list:
  """``rows_for``, cached in ``workdir/eval_STEP.json`` (keyed by the validation
  photos and whether timings were taken), so that a resumed benchmark does not
  evaluate a model again. The decoded image is kept as its SHA-256."""
  final = step == args.train_steps
  key = {"validation": [n for n, _ in photos], "timed": final}
  path = os.path.join(workdir, f"eval_{step}.json")
  if os.path.exists(path):
    cached = json.load(open(path))
    if cached["key"] == key:
      return cached["rows"]
  rows = rows_for(spec, args, workdir, photos, final, step, variants)
  for r in rows:
    if "reconstruction" in r:
      r["reconstruction_sha256"] = hashlib.sha256(
          np.ascontiguousarray(r.pop("reconstruction")).tobytes()).hexdigest()
  with open(path, "w") as f:
    json.dump({"key": key, "rows": rows}, f)
  return rows


def write_outputs(rows, photos, args) -> None:
  shas = {r["reconstruction_sha256"] for r in rows if r.get("reconstruction_sha256")}
  same = len(shas) == 1  # every timed model decoded photo 1 to the same image
  record = {"source": args.model, "size": args.size, "steps": args.train_steps,
            "batch_size": args.batch_size, "learning_rate": args.learning_rate,
            "validation": [n for n, _ in photos], "device": jax.devices()[0].device_kind,
            "same_reconstruction": same,
            "reconstructions_compared": sum(bool(r.get("reconstruction_sha256")) for r in rows),
            "rows": rows}
  common.write_json(common.output_path(args, ".json"), record, args)
  text = markdown(rows, photos, args)
  with open(common.output_path(args, ".md"), "w") as f:
    f.write(text)
  plot(rows, common.output_path(args, ".png"), args.train_steps)
  print(text, flush=True)


if __name__ == "__main__":
  main()
