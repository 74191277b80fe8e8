"""Decode-time benchmark of MT vs M2T (paper Fig. 4 / §4 speed claims).

  python experiments/bench_decode.py --config paper --image-size 384x384 \
      --steps 2 4 8 12 --model both --output out/bench_decode.json

For each model and number of steps S, on whatever device JAX uses, after a
warm-up call (compile time is reported separately), medians over --repeats:

  teacher_forced_s   one teacher-forced M2T pass over all patches (the floor)
  m2t_transformer_s  the S cached M2T steps, transformer work only (paper's timing)
  mt_transformer_s   the S full MT passes, transformer work only
  full_decode_s      Codec.decompress: steps + tables + range decoding + synthesis
  coding_s           table building + range decoding inside full_decode_s
  synthesis_s        the ELIC synthesis and crop
  compile_s          first decompress minus a warm one
  peak_rss_mb        peak resident memory of this process so far (it also encoded)
  decode_peak_rss_mb with --decode-rss: peak memory of a fresh process that only
                     builds the codec and decodes the stream

Writes JSON (--output), a markdown table (.md) and a PNG plot of decode time vs S
(.png, when matplotlib is installed) beside it.

Weights (--weights): random by default; the transformer and synthesis times do
not depend on them. The coding time does: a random model is miscalibrated, codes
more bits and needs more wide tables (``wide_fraction``: the share of elements
coded with +-R tables instead of narrow ones). ``--weights shipped`` loads the
shipped model of each kind (its size must be --config's) with S set to --steps.
"""

import argparse
import functools
import json
import os
import resource
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from m2t_jax import Codec, get_config
from m2t_jax.coding import steppers
from m2t_jax.entropy import gmm, mt, patches
from m2t_jax.entropy.m2t import M2T


def _photo(width: int, height: int) -> np.ndarray:
  from skimage import data
  photo = data.astronaut()
  reps = (-(-height // photo.shape[0]), -(-width // photo.shape[1]), 1)
  return np.ascontiguousarray(np.tile(photo, reps)[:height, :width])


def _median_time(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def _tokens(codec, image):
  y_hat = codec.analyze(image)
  tokens, valid = patches.to_patches(jnp.asarray(y_hat, jnp.float32), codec.config.patch_size)
  return tokens, valid


def _m2t_transformer_fn(codec, tokens):
  """S cached steps, model only (no tables), as one Python loop of jitted steps."""
  model = codec.entropy_model
  params = codec.params["entropy_model"]
  sched = model.schedule

  @functools.partial(jax.jit, static_argnums=3, donate_argnums=2)
  def step(params, prev, cache, i):
    return model.apply({"params": params}, prev, cache, i, method=M2T.step)

  groups = [tokens[:, sched.group(i)] for i in range(sched.num_steps)]

  def run():
    cache = model.init_cache(tokens.shape[0])
    prev = tokens[:, :0]
    out = None
    for i in range(sched.num_steps):
      out, cache = step(params, prev, cache, i)
      prev = groups[i]
    return out
  return run


def _mt_transformer_fn(codec, tokens):
  model = codec.entropy_model
  params = codec.params["entropy_model"]
  sizes = model.group_sizes
  knowns = []
  sched = None if model.order == "entropy" else model.schedule
  for i in range(len(sizes)):
    k = mt.known_before_step(sched, i) if sched else np.arange(model.num_tokens) < sizes[:i].sum()
    knowns.append(jnp.asarray(np.broadcast_to(k, tokens.shape[:2])))
  apply = jax.jit(lambda p, t, k: model.apply({"params": p}, t, k))

  def run():
    out = None
    for known in knowns:
      out = apply(params, jnp.where(known[..., None], tokens, 0.0), known)
    return out
  return run


# VmHWM, not ru_maxrss: Linux carries a parent's ru_maxrss over fork and exec,
# so the child would report at least the parent's peak.
_DECODE_ONLY = """
import sys
from m2t_jax import Codec, get_config
config = get_config(sys.argv[1], sys.argv[2])
config.schedule.num_steps = int(sys.argv[3])
codec = Codec.from_config(config)
codec.decompress(open(sys.argv[4], "rb").read())
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
print(int(hwm.split()[1]) / 1024)
"""


def decode_peak_rss_mb(size, kind, steps, data) -> float:
  """Peak RSS (MB) of a fresh process that builds the codec and decodes ``data``."""
  import subprocess
  import tempfile
  with tempfile.NamedTemporaryFile(suffix=".m2t") as f:
    f.write(data)
    f.flush()
    out = subprocess.run([sys.executable, "-c", _DECODE_ONLY, kind, size, str(steps), f.name],
                         check=True, capture_output=True, text=True)
  return float(out.stdout.strip().splitlines()[-1])


def _codec(size: str, kind: str, steps: int, weights: str) -> Codec:
  if weights == "random":
    config = get_config(kind, size)
    config.schedule.num_steps = steps
    return Codec.from_config(config)
  shipped = Codec.load(kind)
  if shipped.config.size != size:
    raise SystemExit(f"the shipped {kind} model is of size {shipped.config.size!r}, "
                     f"not {size!r}: use --config {shipped.config.size}")
  config = shipped.config.as_configdict()
  config.schedule.num_steps = steps
  return Codec(config, shipped.params)


def bench_one(size: str, kind: str, steps: int, width: int, height: int, repeats: int,
              decode_rss: bool = False, weights: str = "random"):
  codec = _codec(size, kind, steps, weights)
  config = codec.config
  image = _photo(width, height)
  data = codec.compress(image)
  t0 = time.perf_counter()
  codec.decompress(data)
  first = time.perf_counter() - t0
  runs = []
  for _ in range(repeats):
    timings = {}
    t0 = time.perf_counter()
    codec.decompress(data, timings=timings)
    timings["full_decode_s"] = time.perf_counter() - t0
    runs.append(timings)
  med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
  tokens, _ = _tokens(codec, image)

  # Table building alone, as the codec does it (narrow tables for every element,
  # to the host; wide ones for the elements they flag) over every token's mixture.
  mixture = jax.jit(lambda p, t: _any_pass(codec, p, t))(codec.params["entropy_model"], tokens)
  narrow = jax.jit(lambda m: gmm.coding_tables(m, steppers.narrow_radius(config),
                                               config.gmm.prob_floor))
  _, pmf = narrow(mixture)
  wide = np.flatnonzero(steppers.wide_elements(np.asarray(pmf), np.ones(pmf.shape[:-1], bool),
                                               config))

  def tables():
    centers, pmf = narrow(mixture)
    out = [np.asarray(centers), np.asarray(pmf)]
    if wide.size:
      out.append(steppers.wide_tables(mixture, wide, config))
    return out

  tables()
  tables_s = _median_time(tables, repeats)

  record = {
      "config": size, "model": kind, "steps": steps, "image_size": f"{width}x{height}",
      "num_patches": int(tokens.shape[0]), "bytes": len(data),
      "full_decode_s": med["full_decode_s"], "steps_s": med["steps_s"],
      "range_coding_s": med["range_coding_s"], "tables_s": tables_s,
      "coding_s": med["range_coding_s"] + tables_s, "synthesis_s": med["synthesis_s"],
      "wide_fraction": wide.size / pmf[..., 0].size, "weights": weights,
      "compile_s": max(first - med["full_decode_s"], 0.0),
  }
  if kind == "m2t":
    run = _m2t_transformer_fn(codec, tokens)
    jax.block_until_ready(run())
    record["m2t_transformer_s"] = _median_time(run, repeats)
    teacher = jax.jit(lambda p, t: codec.entropy_model.apply({"params": p}, t))
    jax.block_until_ready(teacher(codec.params["entropy_model"], tokens))
    record["teacher_forced_s"] = _median_time(
        lambda: teacher(codec.params["entropy_model"], tokens), repeats)
  else:
    run = _mt_transformer_fn(codec, tokens)
    jax.block_until_ready(run())
    record["mt_transformer_s"] = _median_time(run, repeats)
  record["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  if decode_rss:
    if weights != "random":
      raise SystemExit("--decode-rss measures random weights only")
    record["decode_peak_rss_mb"] = decode_peak_rss_mb(size, kind, steps, data)
  record["device"] = str(jax.devices()[0].device_kind)
  record["platform"] = jax.devices()[0].platform
  return record


def _any_pass(codec, params, tokens):
  if codec.config.model == "m2t":
    return codec.entropy_model.apply({"params": params}, tokens)
  known = jnp.zeros(tokens.shape[:2], bool)
  return codec.entropy_model.apply({"params": params}, tokens, known)


def _markdown(records) -> str:
  cols = ["model", "steps", "image_size", "num_patches", "teacher_forced_s",
          "m2t_transformer_s", "mt_transformer_s", "full_decode_s", "coding_s",
          "synthesis_s", "wide_fraction", "compile_s", "peak_rss_mb", "decode_peak_rss_mb"]
  lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  for r in records:
    cells = []
    for c in cols:
      v = r.get(c, "")
      cells.append(f"{v:.3f}" if isinstance(v, float) else str(v))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _plot(records, path):
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    return False
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for kind, key in (("mt", "mt_transformer_s"), ("m2t", "m2t_transformer_s")):
    rs = sorted((r for r in records if r["model"] == kind), key=lambda r: r["steps"])
    if rs:
      ax.plot([r["steps"] for r in rs], [r[key] for r in rs], "o-", label=kind.upper())
  floor = [r["teacher_forced_s"] for r in records if "teacher_forced_s" in r]
  if floor:
    ax.axhline(statistics.median(floor), color="grey", ls="--", label="one pass (floor)")
  ax.set_xlabel("decode steps S")
  ax.set_ylabel("transformer time per image [s]")
  r0 = records[0]
  ax.set_title(f"{r0['config']} config, {r0['image_size']}, {r0['platform']}")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  return True


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default="tiny", choices=["paper", "small", "tiny"])
  parser.add_argument("--image-size", default="384x384", help="WxH")
  parser.add_argument("--steps", type=int, nargs="+", default=[12])
  parser.add_argument("--model", default="both", choices=["mt", "m2t", "both"])
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--output", default="out/bench_decode.json")
  parser.add_argument("--weights", default="random", choices=["random", "shipped"])
  parser.add_argument("--decode-rss", action="store_true",
                      help="also measure a decode-only process's peak memory")
  args = parser.parse_args(argv)
  width, height = (int(v) for v in args.image_size.lower().split("x"))
  kinds = ["mt", "m2t"] if args.model == "both" else [args.model]
  records = []
  for steps in args.steps:
    for kind in kinds:
      record = bench_one(args.config, kind, steps, width, height, args.repeats,
                         args.decode_rss, args.weights)
      records.append(record)
      print(json.dumps(record), file=sys.stderr, flush=True)
  for steps in args.steps:
    by = {r["model"]: r for r in records if r["steps"] == steps}
    if "mt" in by and "m2t" in by:
      by["m2t"]["mt_over_m2t"] = by["mt"]["mt_transformer_s"] / by["m2t"]["m2t_transformer_s"]
  for r in records:
    if "m2t_transformer_s" in r:
      r["m2t_over_teacher"] = r["m2t_transformer_s"] / r["teacher_forced_s"]
    r["coding_share"] = r["coding_s"] / r["full_decode_s"]
  out = {"argv": sys.argv[1:] if argv is None else argv, "jax": jax.__version__,
         "records": records}
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  with open(args.output, "w") as f:
    json.dump(out, f, indent=1)
  table = _markdown(records)
  with open(os.path.splitext(args.output)[0] + ".md", "w") as f:
    f.write(table + "\n")
  _plot(records, os.path.splitext(args.output)[0] + ".png")
  print(table)


if __name__ == "__main__":
  main()
