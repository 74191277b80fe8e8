"""Why cached M2T steps cost more than their FLOPs on a CPU: XLA matmul speed vs rows.

  python -m experiments.bench_matmul [--output-dir out/bench_matmul]

Times x (m, 768) @ W (768, 9216) (the shape of ViT-B's fused QKV + MLP-in
weights of one layer) for m = 1 .. 576 rows on the current device: an M2T step
multiplies g_i rows (2, 9, 16, ... 100 for S=12), a teacher-forced pass 576.
Prints seconds, GB/s of weights streamed and GFLOP/s; writes
``<output-dir>/bench_matmul.json``.
"""

import json
import time

import jax
import jax.numpy as jnp

from experiments import common
from m2t_jax.entropy import schedules


def _time(f, *args, repeats=20):
  jax.block_until_ready(f(*args))
  t0 = time.perf_counter()
  for _ in range(repeats):
    jax.block_until_ready(f(*args))
  return (time.perf_counter() - t0) / repeats


def build_parser():
  p = common.parser("bench_matmul", __doc__)
  common.add_output(p, "bench_matmul")
  return p


def main(argv=None):
  args = common.parse(build_parser(), argv)
  w = jnp.ones((768, 9216), jnp.float32)
  f = jax.jit(lambda w, x: x @ w)
  sizes = [int(g) for g in schedules.group_sizes(576, 12, 2.2)]
  rows = sorted(set([1, 576] + sizes))
  records = []
  for m in rows:
    s = _time(f, w, jnp.ones((m, 768), jnp.float32))
    records.append({"rows": m, "seconds": s, "weight_gb_per_s": w.nbytes / 1e9 / s,
                    "gflop_per_s": 2 * m * w.size / 1e9 / s})
    print(json.dumps(records[-1]))
  by_rows = {r["rows"]: r["seconds"] for r in records}
  steps = sum(by_rows[g] for g in sizes)
  summary = {"m2t_steps_s": steps, "one_pass_s": by_rows[576], "ratio": steps / by_rows[576],
             "group_sizes": sizes, "device": jax.devices()[0].device_kind}
  print(json.dumps(summary))
  common.write_json(common.output_path(args, ".json"),
                    {"records": records, "summary": summary}, args)


if __name__ == "__main__":
  main()
