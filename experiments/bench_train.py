r"""Training throughput: steps/s, images/s and achieved GFLOP/s of the train step.

  python -m experiments.bench_train --sizes tiny small --kinds m2t
  python -m experiments.bench_train --sizes paper --kinds m2t --batch-size 1 \
      --train-steps 2                                      # a CPU
  python -m experiments.bench_train --sizes paper --dtypes float32 bfloat16

Times ``m2t_jax.train``'s own step (pmap over all local devices, AdamW, the
non-finite guard) on random uint8 crops already in memory, so the numbers are
the model's and not the input pipeline's. One record per (kind, size, dtype):
the first call (compile + one step) is reported as ``first_step_s``, then
``--untimed-steps`` steps are run untimed and ``--train-steps`` steps timed
(``step_s``, ``steps_per_sec``, ``images_per_sec``). FLOPs per step come from
XLA's cost analysis of the compiled step (all devices together;
``flops_per_step``, null where the backend gives none), and
``achieved_gflop_per_sec`` is those FLOPs over the seconds per step. On a GPU the
model FLOPs utilisation is ``flops_per_step * steps_per_sec / (num_devices *
peak)`` with the peak of the device's dense tensor cores for the run's compute
dtype (TF32 for float32: JAX's default precision for float32 matmuls and
convolutions on GPUs; BF16 for ``--dtypes bfloat16``, ``config.compute_dtype``),
from a small table or ``--peak-tflops``.

Writes ``{"device": {...}, "results": [...]}`` (with the run's provenance) to
``<--output-dir>/<--output-name>.json`` and prints a line per record.
"""

import os
import platform
import time

import flax.jax_utils
import jax
import numpy as np

from experiments import common
from m2t_jax import configs, train
from m2t_jax.entropy import registry

# Dense tensor-core peaks (TFLOP/s) by jax device_kind prefix (NVIDIA's data
# sheets, without sparsity): TF32 (float32 runs) and BF16 (bfloat16 runs).
PEAK_TFLOPS = {
    "NVIDIA H200": {"float32": 494.7, "bfloat16": 989.4},
    "NVIDIA H100 80GB HBM3": {"float32": 494.7, "bfloat16": 989.4},  # SXM
    "NVIDIA H100 PCIe": {"float32": 378.0, "bfloat16": 756.0},
    "NVIDIA H100": {"float32": 494.7, "bfloat16": 989.4},
    "NVIDIA A100": {"float32": 156.0, "bfloat16": 312.0},
    "NVIDIA L4": {"float32": 60.0, "bfloat16": 121.0},
}


def peak_tflops(device, dtype: str = "float32", override: float | None = None
                ) -> float | None:
  """Peak TFLOP/s of one ``device`` for ``dtype``: ``override`` when given, else
  PEAK_TFLOPS by device-kind prefix (GPUs only); None when unknown."""
  if override:
    return override
  if device.platform != "gpu":
    return None
  for prefix, value in PEAK_TFLOPS.items():
    if device.device_kind.startswith(prefix):
      return value[dtype]
  return None


def _flops(compiled) -> float | None:
  analysis = compiled.cost_analysis()
  if isinstance(analysis, list | tuple):  # older JAX: one dict per module
    analysis = analysis[0] if analysis else None
  if not analysis or "flops" not in analysis:
    return None
  return float(analysis["flops"])


def bench(kind: str, size: str, dtype: str = "float32", batch_size: int | None = None,
          crop_size: int | None = None, train_steps: int = 10, untimed_steps: int = 2,
          peak: float | None = None) -> dict:
  """One record: the train step of ``kind``'s ``size`` config in ``dtype``
  (batch and crop size overridden when given), ``train_steps`` steps timed after
  the first call and ``untimed_steps`` more. Seconds, steps/s, images/s, FLOPs per
  step and GFLOP/s; MFU where a peak is known (``peak``: TFLOP/s per device)."""
  if train_steps < 1:
    raise ValueError(f"--train-steps must be at least 1, not {train_steps}.")
  config = configs.get_config(kind, size)
  config.compute_dtype = dtype
  if batch_size:
    config.batch_size = batch_size
  if crop_size:
    config.crop_size = crop_size
  devices = jax.local_devices()
  n = len(devices)
  if config.batch_size % n:
    raise ValueError(f"batch_size={config.batch_size} is not a multiple of the {n} "
                     "local devices; pass --batch-size.")
  host_state = train.create_train_state(config)
  num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(host_state.params))
  state = flax.jax_utils.replicate(host_state, axis_name=train.AXIS)
  step = jax.pmap(train.make_train_step(config), axis_name=train.AXIS,
                  in_axes=(0, 0, None), donate_argnums=(0,))
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (n, config.batch_size // n, config.crop_size,
                                 config.crop_size, 3), dtype=np.uint8)
  key = jax.random.key(0)

  start = time.perf_counter()
  compiled = step.lower(state, images, key).compile()
  compile_s = time.perf_counter() - start
  flops = _flops(compiled)
  start = time.perf_counter()
  state, metrics = compiled(state, images, key)
  jax.block_until_ready(metrics)
  first_step_s = time.perf_counter() - start + compile_s
  for _ in range(untimed_steps):
    state, metrics = compiled(state, images, key)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(train_steps):
    state, metrics = compiled(state, images, key)
  jax.block_until_ready(metrics)
  step_s = (time.perf_counter() - start) / train_steps
  # XLA's cost analysis of a pmap step counts one device's program.
  total = None if flops is None else flops * n
  result = {
      "config": f"{config.model}/{size}", "kind": kind, "size": size,
      "compute_dtype": dtype, "batch_size": config.batch_size,
      "crop_size": config.crop_size, "num_params": num_params, "num_devices": n,
      "compile_s": compile_s, "first_step_s": first_step_s,
      "steps_timed": train_steps, "step_s": step_s,
      "steps_per_sec": 1 / step_s,
      "images_per_sec": config.batch_size / step_s,
      "loss_finite": bool(np.all(jax.device_get(metrics["finite"]))),
      "flops_per_step": total,
      "achieved_gflop_per_sec": None if total is None else total / step_s / 1e9,
  }
  peak_device = peak_tflops(devices[0], dtype, peak)
  if total is not None and peak_device:
    result["peak_tflops_per_device"] = peak_device
    result["mfu"] = total / step_s / 1e12 / (n * peak_device)
  return result


def build_parser():
  p = common.parser("bench_train", __doc__)
  common.add(p, "--sizes", nargs="+", default=["tiny", "small"],
             choices=["paper", "small", "tiny"])
  common.add(p, "--kinds", nargs="+", default=["all"], detail="or 'all'")
  common.add(p, "--batch-size", type=int, default=None,
             detail="default: the config's (e.g. 1 for the paper config on a CPU)")
  common.add(p, "--crop-size", type=int, default=None, detail="default: the config's")
  common.add(p, "--dtypes", nargs="+", default=["float32"],
             choices=["float32", "bfloat16"])
  common.add(p, "--train-steps", type=int, default=10, detail="timed, per record")
  common.add(p, "--untimed-steps", type=int, default=2)
  common.add(p, "--peak-tflops", type=float, default=None,
             detail="default: from the device name, GPUs only")
  common.add_output(p, "bench_train")
  return p


def main(argv=None):
  args = common.parse(build_parser(), argv)
  kinds = list(registry.names()) if "all" in args.kinds else args.kinds
  for kind in kinds:
    registry.get(kind)  # ValueError naming the known kinds, before any timing
  device = jax.local_devices()[0]
  report = {
      "device": {"platform": device.platform, "device_kind": device.device_kind,
                 "num_devices": jax.local_device_count(),
                 "host": platform.node(), "cpu_count": os.cpu_count()},
      "results": [],
  }
  path = common.output_path(args, ".json")
  for kind in kinds:
    for size in args.sizes:
      for dtype in args.dtypes:
        result = bench(kind, size, dtype, args.batch_size, args.crop_size,
                       args.train_steps, args.untimed_steps, args.peak_tflops)
        report["results"].append(result)
        mfu = f", MFU {result['mfu']:.1%}" if "mfu" in result else ""
        gflops = (f", {result['achieved_gflop_per_sec']:.1f} GFLOP/s"
                  if result["achieved_gflop_per_sec"] is not None else "")
        print(f"{result['config']} {dtype}: batch {result['batch_size']}x"
              f"{result['crop_size']}^2: {result['steps_per_sec']:.3f} steps/s, "
              f"{result['images_per_sec']:.2f} images/s (compile "
              f"{result['compile_s']:.1f} s){gflops}{mfu}", flush=True)
        common.write_json(path, report, args)  # after each record: a timeout keeps some
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
