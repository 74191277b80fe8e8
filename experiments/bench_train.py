r"""Training throughput: steps/s and images/s of the train step, per config.

  python experiments/bench_train.py --sizes=tiny,small --output=bench.json
  python experiments/bench_train.py --sizes=paper --batch_size=1 --steps=2  # CPU

Times ``m2t_jax.train``'s own step (pmap over all local devices, AdamW, the
non-finite guard) on random uint8 crops already in memory, so the numbers are
the model's and not the input pipeline's. Per config: the first call (compile
+ one step) is reported as ``first_step_s``, then ``--warmup`` steps are run
untimed and ``--steps`` steps timed. FLOPs per step come from XLA's cost analysis
of the compiled step (all devices together); on a GPU the model FLOPs
utilisation is ``flops_per_step * steps_per_sec / (num_devices * peak)`` with the
peak of the device's dense tensor cores for the run's compute dtype (TF32 for
float32: JAX's default precision for float32 matmuls and convolutions on GPUs;
BF16 for ``--dtypes=bfloat16``, ``config.compute_dtype``), from a small table or
``--peak_tflops``.

  python experiments/bench_train.py --sizes=paper --dtypes=float32,bfloat16
"""

import json
import os
import platform
import sys
import time

import flax.jax_utils
import jax
import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from m2t_jax import configs, train  # noqa: E402
from m2t_jax.entropy import registry  # noqa: E402

_SIZES = flags.DEFINE_list("sizes", ["tiny", "small"], "Config sizes: tiny, small, paper.")
_MODEL = flags.DEFINE_enum("model", "m2t", list(registry.names()), "Entropy model kind.")
_BATCH = flags.DEFINE_integer("batch_size", None, "Override the global batch size "
                              "(e.g. 1 for the paper config on a CPU).")
_CROP = flags.DEFINE_integer("crop_size", None, "Override the crop size.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per config.")
_DTYPES = flags.DEFINE_list("dtypes", ["float32"], "Compute dtypes (config.compute_dtype): "
                            "float32, bfloat16.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps after the first call.")
_PEAK = flags.DEFINE_float("peak_tflops", None, "Peak TFLOP/s per device for MFU "
                           "(default: from the device name, GPUs only).")
_OUTPUT = flags.DEFINE_string("output", None, "Write the results here as JSON.")

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


def peak_tflops(device, dtype: str = "float32") -> float | None:
  if _PEAK.value:
    return _PEAK.value
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


def bench(size: str, dtype: str = "float32") -> dict:
  config = configs.get_config(_MODEL.value, size)
  config.compute_dtype = dtype
  if _BATCH.value:
    config.batch_size = _BATCH.value
  if _CROP.value:
    config.crop_size = _CROP.value
  devices = jax.local_devices()
  n = len(devices)
  if config.batch_size % n:
    raise ValueError(f"batch_size={config.batch_size} is not a multiple of the {n} "
                     "local devices; pass --batch_size.")
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
  for _ in range(_WARMUP.value):
    state, metrics = compiled(state, images, key)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(_STEPS.value):
    state, metrics = compiled(state, images, key)
  jax.block_until_ready(metrics)
  elapsed = time.perf_counter() - start
  steps_per_sec = _STEPS.value / elapsed
  result = {
      "config": f"{config.model}/{size}", "compute_dtype": dtype,
      "batch_size": config.batch_size,
      "crop_size": config.crop_size, "num_params": num_params,
      "compile_s": compile_s, "first_step_s": first_step_s,
      "steps_timed": _STEPS.value, "step_s": elapsed / _STEPS.value,
      "steps_per_sec": steps_per_sec,
      "images_per_sec": steps_per_sec * config.batch_size,
      "loss_finite": bool(np.all(jax.device_get(metrics["finite"]))),
      "flops_per_step": flops,
  }
  if flops is not None:
    # XLA's cost analysis of a pmap step counts one device's program.
    total = flops * n
    result["flops_per_step"] = total
    result["achieved_tflops"] = total * steps_per_sec / 1e12
    peak = peak_tflops(devices[0], dtype)
    if peak:
      result["peak_tflops_per_device"] = peak
      result["mfu"] = result["achieved_tflops"] / (n * peak)
  return result


def main(argv):
  del argv
  device = jax.local_devices()[0]
  report = {
      "device": {"platform": device.platform, "device_kind": device.device_kind,
                 "num_devices": jax.local_device_count(),
                 "host": platform.node(), "cpu_count": os.cpu_count()},
      "jax_version": jax.__version__,
      "results": [],
  }
  for size, dtype in [(s, d) for s in _SIZES.value for d in _DTYPES.value]:
    result = bench(size, dtype)
    report["results"].append(result)
    mfu = f", MFU {result['mfu']:.1%}" if "mfu" in result else ""
    tflops = (f", {result['achieved_tflops'] * 1e3:.1f} GFLOP/s"
              if result.get("achieved_tflops") is not None else "")
    print(f"{result['config']} {dtype}: batch {result['batch_size']}x{result['crop_size']}^2: "
          f"{result['steps_per_sec']:.3f} steps/s, {result['images_per_sec']:.2f} "
          f"images/s (compile {result['compile_s']:.1f} s){tflops}{mfu}", flush=True)
  if _OUTPUT.value:
    with open(_OUTPUT.value, "w") as f:
      json.dump(report, f, indent=2)
  return 0


if __name__ == "__main__":
  app.run(main)
