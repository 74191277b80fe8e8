"""Decode-time benchmark of every entropy-model kind (paper Fig. 4 / §4 speed claims).

  python -m experiments.bench_decode --size paper --image-size 384x384 \
      --decode-steps 2 4 8 12 --kinds all

For each kind (--kinds: registered kind names, or 'all') and number of steps S
(``schedule.num_steps``; a kind whose coding plan has another number of steps
runs that, recorded as ``decode_steps``),
on whatever device JAX uses, after a warm-up call (compile time is reported
separately), medians over --repeats; only the entropy-model interface is used:

  one_pass_s         one ``rate`` pass over all patches (M2T: teacher-forced, the
                     floor of cached decoding; MT: one full pass)
  transformer_s      the S decode steps (``decode_step`` + ``decode_update`` fed
                     with the true values), model work only, no tables: the
                     paper's timing (S cached steps for M2T, S full passes for MT)
  transformer_over_one_pass, mt_over_m2t (when both ran): the paper's ratios
  full_decode_s      Codec.decompress: steps + tables + range decoding + synthesis
  coding_s           table building + range decoding inside full_decode_s
  synthesis_s        the ELIC synthesis and crop
  compile_s          first decompress minus a warm one
  peak_rss_mb        peak resident memory of this process so far (it also encoded)
  decode_peak_rss_mb with --decode-rss: peak memory of a fresh process that only
                     builds the codec and decodes the stream

Writes ``{"records": [...]}`` (with the run's provenance) to
``<--output-dir>/<--output-name>.json``, a markdown table (.md) and a PNG plot of
decode time vs S (.png, when matplotlib is installed) beside it.

Weights (--weights): random by default; the transformer and synthesis times do
not depend on them. The coding time does: a random model is miscalibrated, codes
more bits and needs more wide tables (``wide_fraction``: the share of elements
coded with +-R tables instead of narrow ones). ``--weights shipped`` loads the
shipped model of each kind ('all': the kinds that ship; its size must be
--size) with S set to --decode-steps.

Size schedules (--size-schedules, kinds with nested sizes such as 'nested'): each
named schedule ('full', 'fast', 'smallest', or exits '2,2,1,0') is timed as its
own record (``size_schedule``: the exits); kinds with one size run once.
"""

import json
import resource
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments import common
from m2t_jax import Codec, get_config, models
from m2t_jax.coding import tables as coding_tables
from m2t_jax.coding.steps import CodingLoop
from m2t_jax.entropy import gmm, patches, registry


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


def latent_tokens(codec, image):
  """(tokens (N, L, C) float32, valid (N, L) bool) of E's latent of ``image``, in
  patches: what the entropy model reads."""
  y_hat = codec.analyze(image)
  tokens, valid = patches.to_patches(jnp.asarray(y_hat, jnp.float32), codec.config.patch_size)
  return tokens, valid


def _transformer_fn(codec, tokens, valid, size_schedule=None):
  """The S decode steps, model only (no tables), fed with the true values: a
  Python loop of jitted steps, through the entropy-model interface."""
  model = codec.entropy_coder.scheduled(size_schedule)
  params = codec.params["entropy_model"]
  plan = model.coding_plan()
  # Not the codec's jitted step (coding.steps.step_fn): that one also builds the
  # narrow tables, which this timing leaves out (tables_s measures them).
  step = jax.jit(lambda p, s, i, shape: model.apply({"params": p}, s, i, shape,
                                                   method="decode_step"),
                 static_argnums=3, donate_argnums=1)
  tokens = np.asarray(tokens)
  rows = np.arange(tokens.shape[0])[:, None]

  def run():
    state = model.init_decode_state(valid)
    out = None
    for i, planned in enumerate(plan):
      cells, out, state = step(params, state, np.int32(i), model.step_shape(i))
      if planned.cells is not None:  # fixed: known ahead, as the decoder knows them
        cells = np.broadcast_to(planned.cells, (tokens.shape[0], planned.size))
      else:  # chosen by the model from its state (MT's entropy order)
        cells = np.asarray(cells)[:, :planned.size]
      values = tokens[rows, cells, slice(*planned.channels)]
      state = model.decode_update(state, i, cells, values)
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
                     f"not {size!r}: use --size {shipped.config.size}")
  config = shipped.config.as_configdict()
  config.schedule.num_steps = steps
  return Codec(config, shipped.params)


def bench_one(size: str, kind: str, steps: int, width: int, height: int, repeats: int,
              decode_rss: bool = False, weights: str = "random", size_schedule=None):
  codec = _codec(size, kind, steps, weights)
  config = codec.config
  image = _photo(width, height)
  data = codec.compress(image, size_schedule=size_schedule)
  model = codec.entropy_coder.scheduled(size_schedule)
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
  tokens, valid = latent_tokens(codec, image)
  valid = np.asarray(valid)

  # Table building alone, as the codec does it (narrow tables for every element,
  # to the host; wide ones for the elements they flag) over the mixtures of all
  # decode steps, flattened to (elements, K).
  mixture = _all_mixtures(codec, model, np.asarray(tokens), valid)
  narrow = jax.jit(lambda m: gmm.coding_tables(m, coding_tables.narrow_radius(config),
                                               config.gmm.prob_floor))
  _, pmf = narrow(mixture)
  wide = np.flatnonzero(coding_tables.wide_elements(
      np.asarray(pmf), np.ones(pmf.shape[:-1], bool), config))

  def tables():
    centers, pmf = narrow(mixture)
    out = [np.asarray(centers), np.asarray(pmf)]
    if wide.size:
      out.append(coding_tables.wide_tables(mixture, wide, config))
    return out

  tables()
  tables_s = _median_time(tables, repeats)

  record = {
      "config": size, "model": kind, "steps": steps,
      "size_schedule": size_schedule,
      "size_schedule_exits": list(model.resolve_size_schedule(size_schedule)),
      "decode_steps": len(codec.entropy_model.coding_plan()),
      "image_size": f"{width}x{height}",
      "num_patches": int(tokens.shape[0]), "bytes": len(data),
      "full_decode_s": med["full_decode_s"], "steps_s": med["steps_s"],
      "range_coding_s": med["range_coding_s"], "tables_s": tables_s,
      "coding_s": med["range_coding_s"] + tables_s, "synthesis_s": med["synthesis_s"],
      "wide_fraction": wide.size / pmf[..., 0].size, "weights": weights,
      "compile_s": max(first - med["full_decode_s"], 0.0),
  }
  run = _transformer_fn(codec, tokens, valid, size_schedule)
  jax.block_until_ready(run())
  record["transformer_s"] = _median_time(run, repeats)
  one_pass = jax.jit(lambda p, t: model.apply({"params": p}, t, t, method="rate").bits)
  jax.block_until_ready(one_pass(codec.params["entropy_model"], tokens))
  record["one_pass_s"] = _median_time(
      lambda: one_pass(codec.params["entropy_model"], tokens), repeats)
  record["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  if decode_rss:
    if weights != "random":
      raise SystemExit("--decode-rss measures random weights only")
    record["decode_peak_rss_mb"] = decode_peak_rss_mb(size, kind, steps, data)
  record["device"] = str(jax.devices()[0].device_kind)
  record["platform"] = jax.devices()[0].platform
  return record


def _all_mixtures(codec, model, tokens, valid) -> gmm.Mixture:
  """The mixtures of every decode step (true values fed back), fields (M, K)."""
  parts = []
  for step in CodingLoop(model, codec.params["entropy_model"], codec.config, valid):
    parts.append(jax.tree.map(lambda t: t.reshape(-1, t.shape[-1]), step.mixture))
    step.feed(step.take(tokens))
  return jax.tree.map(lambda *ts: jnp.concatenate(ts), *parts)


def _markdown(records) -> str:
  cols = ["model", "size_schedule", "steps", "decode_steps", "image_size", "num_patches",
          "one_pass_s", "transformer_s", "full_decode_s", "coding_s",
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
  label = lambda r: r["model"].upper() + (f" [{r['size_schedule']}]"
                                          if r.get("size_schedule") else "")
  for name in dict.fromkeys(map(label, records)):
    rs = sorted((r for r in records if label(r) == name), key=lambda r: r["decode_steps"])
    ax.plot([r["decode_steps"] for r in rs], [r["transformer_s"] for r in rs], "o-",
            label=name)
  floor = [r["one_pass_s"] for r in records]
  ax.axhline(min(floor), color="grey", ls="--", label="one pass (fastest kind)")
  ax.set_xlabel("decode steps S")
  ax.set_ylabel("transformer time per image [s]")
  r0 = records[0]
  ax.set_title(f"{r0['config']} config, {r0['image_size']}, {r0['platform']}")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  return True


def build_parser():
  p = common.parser("bench_decode", __doc__)
  common.add(p, "--size", default="tiny", choices=["paper", "small", "tiny"])
  common.add(p, "--kinds", nargs="+", default=["all"], detail="or 'all'")
  common.add(p, "--decode-steps", type=int, nargs="+", default=[12])
  common.add(p, "--weights", default="random", choices=["random", "shipped"])
  common.add(p, "--size-schedules", nargs="+", default=None,
             detail="kinds with nested sizes only (default: the model's)")
  common.add(p, "--decode-rss", action="store_true")
  common.add(p, "--image-size", default="384x384")
  common.add(p, "--repeats", type=int, default=3)
  common.add_output(p, "bench_decode")
  return p


def main(argv=None):
  args = common.parse(build_parser(), argv)
  width, height = (int(v) for v in args.image_size.lower().split("x"))
  if args.weights == "shipped":  # 'all' = the kinds that ship (no shipped nested model)
    kinds = models.kinds() if "all" in args.kinds else args.kinds
    unshipped = [kind for kind in kinds if kind not in models.kinds()]
    if unshipped:  # before any timing, not after the first kinds have run
      raise SystemExit(f"no shipped model of kind {', '.join(unshipped)}; the shipped "
                       f"kinds are {', '.join(models.kinds())}")
  else:
    kinds = list(registry.names()) if "all" in args.kinds else args.kinds
  for kind in kinds:
    registry.get(kind)  # ValueError naming the known kinds
  records = []
  for steps in args.decode_steps:
    for kind in kinds:
      scheduled = registry.build(get_config(kind, args.size)).resolve_size_schedule()
      for size_schedule in (args.size_schedules or [None]) if scheduled else [None]:
        record = bench_one(args.size, kind, steps, width, height, args.repeats,
                           args.decode_rss, args.weights, size_schedule)
        records.append(record)
        print(json.dumps(record), file=sys.stderr, flush=True)
  for steps in args.decode_steps:
    by = {r["model"]: r for r in records if r["steps"] == steps
          and not r["size_schedule"]}
    if "mt" in by and "m2t" in by:  # the paper's headline ratio (Fig. 4)
      by["m2t"]["mt_over_m2t"] = by["mt"]["transformer_s"] / by["m2t"]["transformer_s"]
  for r in records:
    r["transformer_over_one_pass"] = r["transformer_s"] / r["one_pass_s"]
    r["coding_share"] = r["coding_s"] / r["full_decode_s"]
  common.write_json(common.output_path(args, ".json"), {"records": records}, args)
  table = _markdown(records)
  with open(common.output_path(args, ".md"), "w") as f:
    f.write(table + "\n")
  _plot(records, common.output_path(args, ".png"))
  print(table)


if __name__ == "__main__":
  main()
