"""Rate and decode cost of every size schedule of a nested model, without decoding.

  python -m experiments.size_schedules --model workdirs/nested_small \
      --images VAL_DIR [--output-dir out/size_schedules] [--output-name size_schedules]

A schedule gives each decode step an (exit, MLP width) pair; exits never
increase, widths are free (``entropy/nested.py``). One teacher-forced pass per
image and MLP width (``NestedM2T.exit_bits`` with every slot at that width)
gives the bits of every exit for every element; summed per decode step they
estimate the rate of *every* admissible schedule. For depth-only schedules the
estimate is exact (a cached decode pays exactly the teacher-forced bits of its
exits, ``tests/test_nested.py``); with mixed widths a step's bits also depend a
little on the widths of the earlier steps (through attention), so every schedule
on the Pareto front is rated again exactly, one pass with its own per-slot
widths (``bpp_exact``; still no decoding). Estimated bpp = (bits + 8 x the
stream's header bytes) / pixels, the mean over the images (and min/max).

Cost, on the first image's patches (or --image-size, a tiled photo): every
(step, exit, width) is compiled once, timed (median of --repeats) and costed by
XLA (FLOPs); a schedule's predicted transformer time and FLOPs are the sums over
its steps. The schedules of
--measure (names or exits; default full, fast, smallest and the Pareto front)
are then decoded for real: transformer steps alone (``bench_decode``'s loop) and
``Codec.decompress`` (real bytes, tables, range coding, synthesis), whose real
bpp is printed beside the estimate.

Prints the Pareto front (estimated bpp vs predicted transformer time) and
writes JSON, markdown (.md) and a PNG (``<output-name>.*`` in ``--output-dir``).
"""

import itertools
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments import bench_decode, common
from m2t_jax.coding import bitstream
from m2t_jax.entropy import nested

MAX_MEASURED_FRONT = 8  # Pareto schedules decoded for real (the slowest dropped)


def admissible(num_steps: int, num_exits: int, num_widths: int = 1) -> list[tuple]:
  """Every schedule (a code per step: ``nested.code(exit, width)``) whose exits
  never increase, largest exits and widest widths first."""
  exits = sorted((tuple(sorted(c, reverse=True)) for c in
                  itertools.combinations_with_replacement(range(num_exits), num_steps)),
                 reverse=True)
  widths = list(itertools.product(range(num_widths), repeat=num_steps))
  return [tuple(nested.code(e, w) for e, w in zip(es, ws, strict=True))
          for es in exits for ws in widths]


def step_bits(codec, tokens, valid, hidden=None) -> np.ndarray:
  """(E, S) bits of each exit for each decode step's elements of an image's
  latent tokens (``bench_decode.latent_tokens``), every slot at MLP widths
  ``hidden`` ((L,) hidden units in slot order; None = full). One compilation
  serves every ``hidden`` (a full width masks nothing)."""
  model = codec.entropy_model
  valid = np.asarray(valid)
  if not hasattr(codec, "_exit_bits"):
    codec._exit_bits = jax.jit(lambda p, t, h: model.apply(
        {"params": p}, t, t, True, h, method="exit_bits"))
  if hidden is None:
    hidden = np.full(model.num_tokens, model.mlp_dim, np.int32)
  bits = np.asarray(codec._exit_bits(codec.params["entropy_model"], tokens,
                                     jnp.asarray(hidden, jnp.int32)), np.float64)
  bits = (bits * valid[None, :, :, None]).sum(axis=(1, 3))  # (E, L)
  step = model.step_of_cell()
  return np.stack([bits[:, step == i].sum(axis=1) for i in range(model.num_steps)], 1)


def width_bits(codec, tokens, valid) -> np.ndarray:
  """(W, E, S): ``step_bits`` with every slot at each MLP width in turn."""
  model = codec.entropy_model
  return np.stack([step_bits(codec, tokens, valid, np.full(model.num_tokens, h, np.int32))
                   for h in model.hidden_sizes()])


def exact_bits(codec, tokens, valid, schedule) -> float:
  """The exact one-pass bits of ``schedule`` (each slot at its step's width, each
  step at its exit): what a cached decode pays."""
  model = codec.entropy_model
  pairs = [nested.split_code(c) for c in schedule]
  hidden = np.repeat([model.hidden_sizes()[w] for _, w in pairs], model.schedule.sizes)
  bits = step_bits(codec, tokens, valid, hidden)
  return float(sum(bits[e, i] for i, (e, _) in enumerate(pairs)))


def step_costs(codec, tokens, valid, repeats: int) -> dict:
  """{(step, code): (seconds, flops)} of every decode step at every (exit, width)
  (the state's values do not change a step's cost, so each runs on an empty
  state)."""
  base = codec.entropy_model
  params = codec.params["entropy_model"]
  fn = jax.jit(lambda p, s, i, shape, m: m.apply({"params": p}, s, i, shape,
                                                 method="decode_step"),
               static_argnums=(3, 4))
  out = {}
  for step in range(base.num_steps):
    for c in (nested.code(e, w) for e in range(base.num_exits)
              for w in range(base.num_widths)):
      model = base.with_size_schedule((c,) * base.num_steps)
      state = model.init_decode_state(valid)
      args = (params, state, np.int32(step), model.step_shape(step), model)
      cost = fn.lower(*args).compile().cost_analysis()
      cost = cost[0] if isinstance(cost, list) else cost
      jax.block_until_ready(fn(*args))
      times = []
      for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
      out[(step, c)] = (statistics.median(times),
                                  float(cost["flops"]) if cost and "flops" in cost else None)
  return out


def pareto(rows: list[dict]) -> list[dict]:
  """Rows not beaten on both estimated bpp and predicted time, fastest first."""
  front, best = [], np.inf
  for row in sorted(rows, key=lambda r: (r["predicted_transformer_s"], r["bpp_est"])):
    if row["bpp_est"] < best - 1e-12:
      front.append(row)
      best = row["bpp_est"]
  return front


def measure(codec, schedule, image, tokens, valid, repeats: int) -> dict:
  """Real decode of one schedule: transformer steps alone, then the full codec."""
  run = bench_decode._transformer_fn(codec, tokens, valid, schedule)
  jax.block_until_ready(run())
  transformer = bench_decode._median_time(run, repeats)
  data = codec.compress(image, size_schedule=schedule)
  assert np.array_equal(codec.decompress(data), codec.estimate(image)["reconstruction"])
  full = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    codec.decompress(data)
    full.append(time.perf_counter() - t0)
  return {"transformer_s": transformer, "full_decode_s": statistics.median(full),
          "bytes": len(data)}


def build_parser():
  p = common.parser("size_schedules", __doc__)
  common.add(p, "--model", required=True, detail="a nested model (e.g. nested:small: "
             "random weights)")
  common.add(p, "--images", required=True)
  common.add(p, "--max-images", type=int, default=0)
  common.add(p, "--image-size", default=None, detail="default: the first image")
  common.add(p, "--measure", nargs="*", default=None,
             detail="default: full fast smallest and the Pareto front")
  common.add(p, "--repeats", type=int, default=3)
  common.add_output(p, "size_schedules")
  return p


def main(argv=None):
  args = common.parse(build_parser(), argv)
  codec = common.load_model(args.model)
  model = codec.entropy_model
  if not hasattr(model, "exit_bits"):
    raise SystemExit(f"{codec.name} has one model size: no size schedules")
  photos = common.load_images(args)
  steps, exits, widths = model.num_steps, model.num_exits, model.num_widths
  latents = {name: bench_decode.latent_tokens(codec, image) for name, image in photos}
  per_image = {name: width_bits(codec, *latents[name]) for name in latents}  # (W, E, S)
  pixels = {name: image.shape[0] * image.shape[1] for name, image in photos}

  timing_image = (bench_decode._photo(*map(int, args.image_size.split("x")))
                  if args.image_size else photos[0][1])
  tokens, valid = bench_decode.latent_tokens(codec, timing_image)
  valid = np.asarray(valid)
  costs = step_costs(codec, tokens, valid, args.repeats)

  def name(schedule) -> str:
    pairs = [nested.split_code(c) for c in schedule]
    return ",".join(str(e) if widths == 1 else f"{e}:{w}" for e, w in pairs)

  schedules = np.asarray(admissible(steps, exits, widths))  # (M, S) codes
  e_of, w_of = schedules % nested.WIDTH_CODE, schedules // nested.WIDTH_CODE
  at = np.arange(steps)[None]
  overhead = 8 * (bitstream.HEADER_BYTES + steps)
  bpp = np.stack([(per_image[n][w_of, e_of, at].sum(axis=1) + overhead) / pixels[n]
                  for n in per_image])  # (images, M)
  seconds = np.asarray([[costs[(i, c)][0] for i, c in enumerate(row)] for row in schedules])
  flops = np.asarray([[costs[(i, c)][1] or 0.0 for i, c in enumerate(row)]
                      for row in schedules])
  rows = [{"schedule": name(row), "codes": [int(c) for c in row],
           "bpp_est": float(bpp[:, m].mean()), "bpp_min": float(bpp[:, m].min()),
           "bpp_max": float(bpp[:, m].max()),
           "predicted_transformer_s": float(seconds[m].sum()),
           "transformer_gflops": float(flops[m].sum()) / 1e9}
          for m, row in enumerate(schedules)]
  full_name = name(model.resolve_size_schedule("full"))
  full = next(r for r in rows if r["schedule"] == full_name)
  for row in rows:
    row["bpp_vs_full_pct"] = 100 * (row["bpp_est"] / full["bpp_est"] - 1)
    row["time_vs_full"] = row["predicted_transformer_s"] / full["predicted_transformer_s"]
  front = pareto(rows)
  named = {n: name(model.resolve_size_schedule(n)) for n in ("full", "fast", "smallest")}
  kept = {r["schedule"]: r for r in rows if r in front or r["schedule"] in named.values()}
  for row in kept.values():  # exact one-pass rate (mixed widths: see the docstring)
    exact = [(exact_bits(codec, *latents[n], row["codes"]) + overhead) / pixels[n]
             for n in latents]
    row["bpp_exact"] = float(np.mean(exact))
    row["bpp_exact_vs_full_pct"] = None  # filled below
  for row in kept.values():
    row["bpp_exact_vs_full_pct"] = 100 * (row["bpp_exact"]
                                          / kept[full_name]["bpp_exact"] - 1)
  measure_specs = args.measure if args.measure is not None else (
      ["full", "fast", "smallest"] + [r["schedule"] for r in front[-MAX_MEASURED_FRONT:]])
  measured = {}
  for spec in dict.fromkeys(measure_specs):
    schedule = name(model.resolve_size_schedule(spec))
    if schedule in measured:
      continue
    m = measure(codec, spec, timing_image, tokens, valid, args.repeats)
    m["real_bpp"] = 8 * m["bytes"] / (timing_image.shape[0] * timing_image.shape[1])
    measured[schedule] = m
    print(f"measured {spec} ({schedule}): {json.dumps(m)}", flush=True)
  for row in rows:
    row.update(measured.get(row["schedule"], {}))
  shown = [r for r in rows if r["schedule"] in kept or r["schedule"] in measured]

  out = {"argv": args.argv, "model": codec.name,
         "exit_layers": list(model.exit_layers), "hidden_sizes": list(model.hidden_sizes()),
         "steps": steps, "num_admissible": len(rows),
         "images": sorted(per_image), "timing_image": list(timing_image.shape[:2]),
         "named": named,
         "device": f"{jax.devices()[0].device_kind}, {os.cpu_count()} CPUs, JAX "
                   f"{jax.__version__}",
         "step_costs": [{"step": i, "exit": nested.split_code(c)[0],
                         "width": nested.split_code(c)[1], "seconds": t,
                         "gflops": f and f / 1e9}
                        for (i, c), (t, f) in sorted(costs.items())],
         "pareto": [r["schedule"] for r in front], "schedules": shown}
  common.write_json(common.output_path(args, ".json"), out, args)
  cols = ["schedule", "bpp_est", "bpp_exact", "bpp_exact_vs_full_pct",
          "predicted_transformer_s", "time_vs_full", "transformer_gflops",
          "transformer_s", "full_decode_s", "real_bpp"]
  lines = [f"Size schedules of {codec.name} (exits after {list(model.exit_layers)} "
           f"blocks, MLP widths {list(model.hidden_sizes())}, S = {steps}), "
           f"{len(per_image)} images, {out['device']}; Pareto front and measured "
           f"schedules of {len(rows)} admissible (schedule: exit or exit:width per step).",
           "",
           "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  for r in sorted(shown, key=lambda r: r["predicted_transformer_s"]):
    lines.append("| " + " | ".join(
        (f"{r.get(c):.4f}" if isinstance(r.get(c), float) else str(r.get(c, "")))
        for c in cols) + " |")
  with open(common.output_path(args, ".md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))
  try:
    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
  except ImportError:
    return
  fig, ax = plt.subplots(figsize=(5.5, 3.8))
  ax.scatter([r["predicted_transformer_s"] for r in rows], [r["bpp_est"] for r in rows],
             s=8, color="grey", label="admissible schedules")
  ax.plot([r["predicted_transformer_s"] for r in front], [r["bpp_est"] for r in front],
          "o-", color="C0", label="Pareto front")
  for label, schedule in named.items():
    r = next(r for r in rows if r["schedule"] == schedule)
    ax.annotate(label, (r["predicted_transformer_s"], r["bpp_est"]))
  ax.set_xlabel("predicted transformer decode time [s]")
  ax.set_ylabel("estimated bpp")
  ax.legend()
  fig.tight_layout()
  fig.savefig(common.output_path(args, ".png"), dpi=120)


if __name__ == "__main__":
  main()
