"""Rate and decode cost of every size schedule of a nested model, without decoding.

  python -m experiments.size_schedules --model workdirs/nested_small \
      --images VAL_DIR [--output-dir out/size_schedules] [--output-name size_schedules]

One teacher-forced pass per image (``NestedM2T.exit_bits``) gives the bits of
every exit for every element; summed per decode step they give the estimated
rate of *every* admissible schedule (exits never increasing; C(S+E-1, S) of
them), because a cached decode of a schedule pays exactly the teacher-forced
bits of its exits (``tests/test_nested.py``). Estimated bpp = (bits + 8 x the
stream's header bytes) / pixels, the mean over the images (and min/max).

Cost, on the first image's patches (or --image-size, a tiled photo): every
decode step of width G at exit e costs the same whatever its index (a padded
step attends over the whole cache buffer), so each (G, e) is compiled once,
timed (median of --repeats) and costed by XLA (FLOPs); a schedule's predicted
transformer time and FLOPs are the sums over its steps. The schedules of
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
from m2t_jax.entropy import patches


def admissible(num_steps: int, num_exits: int) -> list[tuple]:
  """Every schedule of exits that never increase, largest exits first."""
  return sorted((tuple(sorted(c, reverse=True)) for c in
                 itertools.combinations_with_replacement(range(num_exits), num_steps)),
                reverse=True)


def step_bits(codec, image: np.ndarray) -> np.ndarray:
  """(E, S) bits of each exit for each decode step's elements of ``image``."""
  model = codec.entropy_model
  y_hat = codec.analyze(image)
  tokens, valid = patches.to_patches(jnp.asarray(y_hat, jnp.float32), codec.config.patch_size)
  if not hasattr(codec, "_exit_bits"):
    codec._exit_bits = jax.jit(lambda p, t: model.apply({"params": p}, t, t,
                                                        method="exit_bits"))
  bits = np.asarray(codec._exit_bits(codec.params["entropy_model"], tokens), np.float64)
  bits = (bits * np.asarray(valid)[None, :, :, None]).sum(axis=(1, 3))  # (E, L)
  step = model.step_of_cell()
  return np.stack([bits[:, step == i].sum(axis=1) for i in range(model.num_steps)], 1)


def step_costs(codec, tokens, valid, repeats: int) -> dict:
  """{(width, exit): (seconds, flops)} of one decode step at every (G, e)."""
  base = codec.entropy_model
  params = codec.params["entropy_model"]
  fn = jax.jit(lambda p, s, i, shape, m: m.apply({"params": p}, s, i, shape,
                                                 method="decode_step"),
               static_argnums=(3, 4))
  out = {}
  widths = sorted({base.step_width(i) for i in range(base.num_steps)})
  for width in widths:
    step = next(i for i in range(base.num_steps) if base.step_width(i) == width)
    for exit_index in range(base.num_exits):
      model = base.with_size_schedule((exit_index,) * base.num_steps)
      state = model.init_decode_state(valid)
      args = (params, state, np.int32(step), (width, exit_index), model)
      cost = fn.lower(*args).compile().cost_analysis()
      cost = cost[0] if isinstance(cost, list) else cost
      jax.block_until_ready(fn(*args))
      times = []
      for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
      out[(width, exit_index)] = (statistics.median(times),
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
  steps, exits = model.num_steps, model.num_exits
  per_image = {name: step_bits(codec, image) for name, image in photos}
  pixels = {name: image.shape[0] * image.shape[1] for name, image in photos}

  timing_image = (bench_decode._photo(*map(int, args.image_size.split("x")))
                  if args.image_size else photos[0][1])
  tokens, valid = bench_decode._tokens(codec, timing_image)
  valid = np.asarray(valid)
  costs = step_costs(codec, tokens, valid, args.repeats)

  rows = []
  for schedule in admissible(steps, exits):
    bpp = [(per_image[n][list(schedule), range(steps)].sum()
            + 8 * (bitstream.HEADER_BYTES + steps)) / pixels[n] for n in per_image]
    cost = [costs[(model.step_width(i), e)] for i, e in enumerate(schedule)]
    flops = [c[1] for c in cost]
    rows.append({"schedule": ",".join(map(str, schedule)), "bpp_est": float(np.mean(bpp)),
                 "bpp_min": float(np.min(bpp)), "bpp_max": float(np.max(bpp)),
                 "predicted_transformer_s": float(sum(c[0] for c in cost)),
                 "transformer_gflops": (None if None in flops else sum(flops) / 1e9)})
  full = next(r for r in rows if r["schedule"] == ",".join([str(exits - 1)] * steps))
  for row in rows:
    row["bpp_vs_full_pct"] = 100 * (row["bpp_est"] / full["bpp_est"] - 1)
    row["time_vs_full"] = row["predicted_transformer_s"] / full["predicted_transformer_s"]
  front = pareto(rows)
  measure_specs = args.measure if args.measure is not None else (
      ["full", "fast", "smallest"] + [r["schedule"] for r in front])
  measured = {}
  for spec in dict.fromkeys(measure_specs):
    schedule = ",".join(map(str, model.resolve_size_schedule(spec)))
    if schedule in measured:
      continue
    m = measure(codec, spec, timing_image, tokens, valid, args.repeats)
    m["real_bpp"] = 8 * m["bytes"] / (timing_image.shape[0] * timing_image.shape[1])
    measured[schedule] = m
    print(f"measured {spec} ({schedule}): {json.dumps(m)}", flush=True)
  for row in rows:
    row.update(measured.get(row["schedule"], {}))

  out = {"argv": args.argv, "model": codec.name,
         "exit_layers": list(model.exit_layers), "steps": steps,
         "images": sorted(per_image), "timing_image": list(timing_image.shape[:2]),
         "named": {n: ",".join(map(str, model.resolve_size_schedule(n)))
                   for n in ("full", "fast", "smallest")},
         "device": f"{jax.devices()[0].device_kind}, {os.cpu_count()} CPUs, JAX "
                   f"{jax.__version__}",
         "step_costs": [{"width": w, "exit": e, "seconds": s, "gflops": f and f / 1e9}
                        for (w, e), (s, f) in sorted(costs.items())],
         "pareto": [r["schedule"] for r in front], "schedules": rows}
  common.write_json(common.output_path(args, ".json"), out, args)
  cols = ["schedule", "bpp_est", "bpp_vs_full_pct", "predicted_transformer_s",
          "time_vs_full", "transformer_gflops", "transformer_s", "full_decode_s", "real_bpp"]
  shown = [r for r in rows if r in front or r["schedule"] in measured]
  lines = [f"Size schedules of {codec.name} (exits after {list(model.exit_layers)} "
           f"blocks, S = {steps}), {len(per_image)} images, {out['device']}; "
           f"Pareto front and measured schedules of {len(rows)} admissible.", "",
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
  for name, schedule in out["named"].items():
    r = next(r for r in rows if r["schedule"] == schedule)
    ax.annotate(name, (r["predicted_transformer_s"], r["bpp_est"]))
  ax.set_xlabel("predicted transformer decode time [s]")
  ax.set_ylabel("estimated bpp")
  ax.legend()
  fig.tight_layout()
  fig.savefig(common.output_path(args, ".png"), dpi=120)


if __name__ == "__main__":
  main()
