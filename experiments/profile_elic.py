r"""Where the ELIC transforms spend their time, against what the device's matmuls reach.

  python -m experiments.profile_elic                       # small config, this device
  python -m experiments.profile_elic --sizes small --batch-size 4 --crop-size 256 \
      --image-size 768x512 --repeats 5

For each config size, two workloads: *training* (a batch of ``--batch-size``
crops of ``--crop-size``, forward and forward+backward, as the train step and
refinement run them) and *coding* (one ``--image-size`` photo, forward only, as
``Codec`` runs E and D). For each, E (analysis) and D (synthesis) whole, then
every convolution they call, by kind (5x5 stride-2 conv, 5x5 up-convolution,
3x3, 1x1), each timed alone at its exact shapes (found by intercepting the
modules' calls), with FLOPs from XLA's cost analysis; what the convolutions do
not account for (ReLUs, sigmoids, adds, reshapes, and fusion across layers) is
the ``rest`` row. The roofline row is a float32 matmul of 4096 x 1024 x 1024 on
the same device: the GFLOP/s its dense kernels reach.

Writes ``{"roofline_gflop_per_sec", "results": [...]}`` (with provenance) to
``<--output-dir>/<--output-name>.json`` and a Markdown table beside it.
"""

import collections
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from experiments import common
from m2t_jax import configs
from m2t_jax.nn import elic

CONV_KINDS = ("conv5x5/2", "upconv5x5", "conv3x3", "conv1x1")


def _flops(compiled) -> float:
  analysis = compiled.cost_analysis()
  if isinstance(analysis, list | tuple):
    analysis = analysis[0] if analysis else {}
  return float((analysis or {}).get("flops", 0.0))


def timed(fn, args, repeats: int) -> tuple[float, float]:
  """(median seconds, FLOPs) of the jitted ``fn(*args)`` after one warm-up call."""
  compiled = jax.jit(fn).lower(*args).compile()
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times)), _flops(compiled)


def roofline(repeats: int) -> float:
  """GFLOP/s of a float32 (4096, 1024) @ (1024, 1024) matmul."""
  a, b = jnp.ones((4096, 1024), jnp.float32), jnp.ones((1024, 1024), jnp.float32)
  seconds, _ = timed(lambda a, b: a @ b, (a, b), repeats)
  return 2 * 4096 * 1024 * 1024 / seconds / 1e9


def conv_kind(module) -> str | None:
  if isinstance(module, elic.UpConv5x5):
    return "upconv5x5"
  if isinstance(module, elic.Conv1x1):
    return "conv1x1"
  if isinstance(module, nn.Conv):
    size = tuple(module.kernel_size)
    if size == (5, 5) and tuple(module.strides or (1, 1)) == (2, 2):
      return "conv5x5/2"
    return {(3, 3): "conv3x3", (1, 1): "conv1x1"}.get(size)
  return None


def conv_calls(module, params, x) -> list[tuple[str, object, tuple, dict]]:
  """(kind, module clone, input shape, its params) of every convolution that
  ``module.apply({'params': params}, x)`` calls, in call order."""
  calls = []

  def interceptor(next_fun, args, kwargs, context):
    kind = conv_kind(context.module)
    if kind is not None and context.method_name == "__call__":
      m = context.module
      calls.append((kind, m.clone(parent=None, name=None), args[0].shape,
                    m.variables["params"]))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):  # eagerly: the parameters come out concrete
    module.apply({"params": params}, x[:1])
  return [(kind, conv, (x.shape[0], *shape[1:]), p) for kind, conv, shape, p in calls]


def _forward(module):
  return lambda p, x: module.apply({"params": p}, x)


def _forward_backward(module):
  """Gradients w.r.t. parameters and input of sum(output^2): the backward work of
  training (parameters) and of refinement (the input latent)."""
  return jax.grad(lambda p, x: jnp.sum(jnp.square(module.apply({"params": p}, x))),
                  argnums=(0, 1))


def profile_module(name: str, module, params, x, backward: bool, repeats: int) -> list[dict]:
  """Rows: the whole module, each conv kind (its calls summed), the rest."""
  fn = _forward_backward if backward else _forward
  total_s, total_flops = timed(fn(module), (params, x), repeats)
  by_kind = collections.defaultdict(lambda: [0.0, 0.0, 0])
  for kind, conv, shape, conv_params in conv_calls(module, params, x):
    s, f = timed(fn(conv), (conv_params, jnp.ones(shape, x.dtype)), repeats)
    by_kind[kind][0] += s
    by_kind[kind][1] += f
    by_kind[kind][2] += 1
  pass_name = "forward+backward" if backward else "forward"
  rows = [{"transform": name, "pass": pass_name, "op": "all", "calls": None,
           "seconds": total_s, "gflop": total_flops / 1e9}]
  conv_s = conv_f = 0.0
  for kind in CONV_KINDS:
    if kind in by_kind:
      s, f, n = by_kind[kind]
      conv_s, conv_f = conv_s + s, conv_f + f
      rows.append({"transform": name, "pass": pass_name, "op": kind, "calls": n,
                   "seconds": s, "gflop": f / 1e9})
  rows.append({"transform": name, "pass": pass_name, "op": "rest", "calls": None,
               "seconds": total_s - conv_s, "gflop": (total_flops - conv_f) / 1e9})
  for row in rows:
    row["gflop_per_sec"] = (row["gflop"] / row["seconds"]
                            if row["seconds"] > 0 and row["gflop"] > 0 else None)
    row["share"] = row["seconds"] / total_s
  return rows


def profile_size(size: str, batch: int | None, crop: int | None, image_size: str,
                 repeats: int) -> list[dict]:
  config = configs.get_config("m2t", size)
  batch, crop = batch or config.batch_size, crop or config.crop_size
  width, height = map(int, image_size.lower().split("x"))
  up = lambda side: -(-side // elic.DOWNSCALE) * elic.DOWNSCALE  # E's padded sides
  height, width = up(height), up(width)
  analysis = elic.ElicAnalysis(config.elic.num_filters, config.latent_channels,
                               config.elic.num_res_blocks)
  synthesis = elic.ElicSynthesis(config.elic.num_filters, config.elic.num_res_blocks)
  key = jax.random.key(0)
  records = []
  for workload, shape, passes in (
      ("training", (batch, crop, crop, 3), (False, True)),
      ("coding", (1, height, width, 3), (False,))):
    x = jax.random.uniform(key, shape, jnp.float32)
    y_shape = (shape[0], shape[1] // elic.DOWNSCALE, shape[2] // elic.DOWNSCALE,
               config.latent_channels)
    y = jax.random.normal(key, y_shape, jnp.float32)
    e_params = jax.jit(analysis.init)(key, x)["params"]
    d_params = jax.jit(synthesis.init)(key, y)["params"]
    for backward in passes:
      for name, module, params, inp in (("E", analysis, e_params, x),
                                        ("D", synthesis, d_params, y)):
        for row in profile_module(name, module, params, inp, backward, repeats):
          row.update({"size": size, "workload": workload, "input": list(shape)})
          records.append(row)
          print(f"{size} {workload} {name} {row['pass']:>16} {row['op']:>10}: "
                f"{row['seconds'] * 1e3:8.1f} ms {row['share']:6.1%}  "
                f"{row['gflop']:7.2f} GFLOP "
                f"{row['gflop_per_sec'] or float('nan'):6.1f} GFLOP/s", flush=True)
  return records


def markdown(report: dict) -> str:
  lines = [f"Roofline (float32 4096x1024x1024 matmul): "
           f"{report['roofline_gflop_per_sec']:.1f} GFLOP/s", "",
           "| size | workload | transform | pass | op | calls | ms | share | GFLOP | GFLOP/s "
           "| of roofline |",
           "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
  peak = report["roofline_gflop_per_sec"]
  for r in report["results"]:
    rate = r["gflop_per_sec"]
    lines.append(
        f"| {r['size']} | {r['workload']} | {r['transform']} | {r['pass']} | {r['op']} | "
        f"{r['calls'] or ''} | {r['seconds'] * 1e3:.1f} | {r['share']:.0%} | "
        f"{r['gflop']:.2f} | {'' if rate is None else f'{rate:.1f}'} | "
        f"{'' if rate is None else f'{rate / peak:.0%}'} |")
  return "\n".join(lines) + "\n"


def build_parser():
  p = common.parser("profile_elic", __doc__)
  common.add(p, "--sizes", nargs="+", default=["small"], choices=["paper", "small", "tiny"])
  common.add(p, "--batch-size", type=int, default=None, detail="default: the config's")
  common.add(p, "--crop-size", type=int, default=None, detail="default: the config's")
  common.add(p, "--image-size", default="768x512",
             detail="random pixels: a transform's time does not depend on them")
  common.add(p, "--repeats", type=int, default=5)
  common.add_output(p, "profile_elic")
  return p


def main(argv=None):
  args = common.parse(build_parser(), argv)
  report = {"roofline_gflop_per_sec": roofline(args.repeats), "results": []}
  print(f"roofline: {report['roofline_gflop_per_sec']:.1f} GFLOP/s", flush=True)
  for size in args.sizes:
    report["results"] += profile_size(size, args.batch_size, args.crop_size,
                                      args.image_size, args.repeats)
  common.write_json(common.output_path(args, ".json"), report, args)
  with open(common.output_path(args, ".md"), "w") as f:
    f.write(markdown(report))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
