"""The accelerator report: one command, a folder of JSON + markdown.

  python -m experiments.accelerator_report                            # GPU/TPU host
  python -m experiments.accelerator_report --output-dir /tmp/acc --quick  # CPU check

Writes ``report.json`` (with the run's provenance) and ``report.md`` into
``--output-dir`` (default ``out/accelerator_report``).

Sections, each in its own fresh process under its own time limit (seconds, full
mode; a section that runs out is recorded as ``timeout`` with the last progress
lines it printed, and the next one starts, so one slow part cannot eat the rest;
``report.json`` is rewritten after every section):

| section       | limit | what                                                       |
|---------------|------:|------------------------------------------------------------|
| devices       |    20 | platform, device kind and count, JAX version               |
| roundtrip     |   125 | every registered kind (its shipped model, else random       |
|               |       | weights of the size below): compress + decompress on the   |
|               |       | device, decoded image == ``estimate`` reconstruction        |
| two_process   |    90 | encode in one fresh process, decode in another (device),   |
|               |       | each compiling for itself (own empty compilation cache)    |
| cpu_to_device |    60 | encode on the CPU (JAX_PLATFORMS=cpu), decode on the       |
|               |       | device: exact, or DecodeMismatchError; a wrong image fails |
| bench_decode  |   180 | ``bench_decode`` paper config, 2000x1500, S = 12, each     |
|               |       | kind in its own process: M2T 70, MT 45, GroupedMixer 35,   |
|               |       | nested M2T 30 s (size schedules full and fast)             |
| bench_train   |    60 | ``bench_train`` M2T paper config: steps/s, images/s, MFU,  |
|               |       | float32 and bfloat16 (``config.compute_dtype``)             |

Total 535 s of limits plus start-up.

**Compilation.** XLA's GPU compiler takes seconds per executable, and a coding
path that compiled one executable per decode step would time out in every codec
section. Every child therefore runs with
``JAX_LOG_COMPILES=1``; the report sums the compilations each section logged
(``compile_s``, ``compiles``), so a slow section says whether it compiled or
computed. roundtrip, cpu_to_device's decoder and the decode benchmarks share one
persistent compilation cache (``<output-dir>/jax_cache``; what a user's repeated runs
have), two_process's encoder and decoder each compile alone (their point is two
independent compilations giving the same tables). ``--quick`` uses the tiny
configs, small images, one shared compilation cache (two_process then checks the
script, not independent compilations), float32 training only and limits of 400 s
per section, for a CPU check;
``--kinds`` restricts the kinds of every section (``tests/test_accelerator_report.py``
runs ``--quick --kinds nested``: every section).
The codec's GPU settings are those of ``m2t_jax/coding/determinism.py``.
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import time

from experiments import common

ROOT = common.ROOT
LIMITS = {"devices": 20, "roundtrip": 125, "two_process": 90, "cpu_to_device": 60,
          "bench_decode": 40, "bench_train": 60}
# bench_decode runs once per kind, each under its own limit, the paper's kind
# first; other kinds get LIMITS["bench_decode"].
DECODE_LIMITS = {"m2t": 70, "mt": 45, "grouped": 35, "nested": 30}
DECODE_ARGS = {"nested": ["--size-schedules", "full", "fast"]}
DECODE_ORDER = ("m2t", "mt")  # then the other registered kinds
QUICK_LIMITS = {k: 400 for k in LIMITS}  # a CPU with few cores compiles slowly


def _image(quick: bool):
  from skimage import data
  image = data.astronaut()
  return image[:48, :80] if quick else image


def _codec(kind: str, quick: bool):
  """The shipped model of ``kind`` (full mode) or a random one."""
  from m2t_jax import Codec, get_config, models
  if not quick and models.names(kind):
    name = models.names(kind)[0]
    return Codec.load(name), name
  size = "tiny" if quick else "small"
  return Codec.from_config(get_config(kind, size)), f"{kind}:{size} (random)"


def _kinds(args) -> list[str]:
  """The kinds a report covers: --kinds, else every registered kind; the paper's
  kinds (DECODE_ORDER) first."""
  from m2t_jax.entropy import registry
  names = registry.names()
  unknown = [k for k in args.kinds or () if k not in names]
  if unknown:
    raise SystemExit(f"--kinds: unknown {unknown}; registered: {list(names)}")
  kinds = [k for k in args.kinds or names]
  return ([k for k in DECODE_ORDER if k in kinds]
          + [k for k in kinds if k not in DECODE_ORDER])


def _pair(args) -> list[str]:
  """The kinds of the two-process sections: M2T and MT (those of --kinds), else
  the first of --kinds."""
  kinds = _kinds(args)
  return [k for k in DECODE_ORDER if k in kinds] or kinds[:1]


# --- sections, run in a child process -------------------------------------------


def _progress(message: str) -> None:
  """A timestamped line on stdout: the parent keeps the last ones of a section
  that times out."""
  print(f"[{time.perf_counter():8.2f} s] {message}", flush=True)


def section_devices(args):
  import jax
  d = jax.devices()[0]
  return {"platform": d.platform, "device_kind": d.device_kind,
          "num_devices": jax.device_count(), "jax": jax.__version__}


def section_roundtrip(args):
  import numpy as np
  image, out = _image(args.quick), {}
  for kind in _kinds(args):
    _progress(f"{kind}: loading")
    codec, name = _codec(kind, args.quick)
    _progress(f"{kind}: compressing")
    t0 = time.perf_counter()
    data = codec.compress(image)
    t1 = time.perf_counter()
    _progress(f"{kind}: decompressing")
    decoded = codec.decompress(data)
    t2 = time.perf_counter()
    _progress(f"{kind}: done")
    exact = bool(np.array_equal(decoded, codec.estimate(image)["reconstruction"]))
    out[kind] = {"model": name, "exact": exact, "bytes": len(data),
                 "encode_s_first": t1 - t0, "decode_s_first": t2 - t1}
  return out


def section_encode(args):
  """Child of two_process / cpu_to_device: writes streams and expected images."""
  import numpy as np
  image = _image(args.quick)
  out = {}
  for kind in _pair(args):
    _progress(f"{kind}: encoding")
    codec, name = _codec(kind, args.quick)
    with open(os.path.join(args.tmp, f"{kind}.m2t"), "wb") as f:
      f.write(codec.compress(image))
    np.save(os.path.join(args.tmp, f"{kind}.npy"), codec.estimate(image)["reconstruction"])
    out[kind] = name
  return out


def section_decode(args):
  import numpy as np
  from m2t_jax import DecodeMismatchError
  out = {}
  for kind in _pair(args):
    _progress(f"{kind}: decoding")
    codec, _ = _codec(kind, args.quick)
    data = open(os.path.join(args.tmp, f"{kind}.m2t"), "rb").read()
    expected = np.load(os.path.join(args.tmp, f"{kind}.npy"))
    try:
      decoded = codec.decompress(data)
      out[kind] = "exact" if np.array_equal(decoded, expected) else "WRONG IMAGE"
    except DecodeMismatchError as e:
      out[kind] = f"DecodeMismatchError: {str(e).splitlines()[0][:200]}"
  return out


SECTIONS = {"devices": section_devices, "roundtrip": section_roundtrip,
            "encode": section_encode, "decode": section_decode}


# --- the parent -------------------------------------------------------------------


COMPILE_LINE = re.compile(r"Finished XLA compilation of (.*) in ([0-9.eE+-]+) sec")


def _env(cache: str | None, **extra) -> dict:
  """A child's environment: compilations logged, the given persistent cache
  (None: none at all), plus ``extra``."""
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
  env.update(JAX_LOG_COMPILES="1", **extra)
  if cache:
    env.update(JAX_COMPILATION_CACHE_DIR=cache,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  return env


def compile_stats(log: str) -> dict:
  """Number and seconds of the XLA compilations a child logged, and the five
  slowest (name, seconds)."""
  found = [(m.group(1), float(m.group(2))) for m in COMPILE_LINE.finditer(log)]
  slowest = sorted(found, key=lambda f: -f[1])[:5]
  return {"compiles": len(found), "compile_s": round(sum(s for _, s in found), 3),
          "slowest_compiles": [[n[:80], round(t, 3)] for n, t in slowest]}


def _run(cmd, env, limit) -> dict:
  """Runs ``cmd``; status, seconds, compile stats, and on failure the last
  progress lines (stdout) and stderr."""
  t0 = time.perf_counter()
  try:
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=limit, check=False)
    out, err, status = proc.stdout, proc.stderr, "ok" if proc.returncode == 0 else "error"
  except subprocess.TimeoutExpired as e:
    text = lambda b: b.decode(errors="replace") if isinstance(b, bytes) else (b or "")
    out, err, status = text(e.stdout), text(e.stderr), "timeout"
  record = {"status": status, "seconds": round(time.perf_counter() - t0, 3),
            **compile_stats(err)}
  if status == "timeout":
    record["limit_s"] = limit
  if status != "ok":
    record["last_progress"] = out.strip().splitlines()[-5:]
    errors = [line for line in err.splitlines() if "compilation" not in line.lower()
              and not line.startswith(("Compiling ", "Finished "))]
    record["stderr"] = "\n".join(errors)[-2000:]
  return record


def _child(section, args, limit, env, extra=()):
  """Runs one section in a fresh process; returns its JSON merged into the run
  record (status, seconds, compile stats)."""
  with tempfile.NamedTemporaryFile("r", suffix=".json") as result:
    cmd = [sys.executable, "-m", "experiments.accelerator_report", "--section", section,
           "--result", result.name, "--tmp", args.tmp, *(["--quick"] if args.quick else []),
           *(["--kinds", *args.kinds] if args.kinds else []), *extra]
    record = _run(cmd, env, limit)
    if record["status"] == "ok":
      record.update(json.load(open(result.name)))
    return record


def _script(name, argv, limit, env):
  """Runs ``python -m experiments.<name> ARGV`` from the repository root."""
  return _run([sys.executable, "-m", f"experiments.{name}", *argv], env, limit)


# The two benchmark scripts' command lines, in their own flags.
def _output_argv(output) -> list[str]:
  """--output-dir and --output-name of the results file ``output`` (a .json path)."""
  folder, name = os.path.split(os.path.splitext(output)[0])
  return ["--output-dir", folder or ".", "--output-name", name]


def _bench_decode_argv(size, image, steps, kind, repeats, output) -> list[str]:
  return ["--size", size, "--image-size", image, "--decode-steps", steps, "--kinds", kind,
          "--repeats", repeats, *_output_argv(output)]


def _bench_train_argv(size, dtypes, output, quick) -> list[str]:
  return ["--sizes", size, "--kinds", "m2t", "--dtypes", *dtypes, "--train-steps", "3",
          "--untimed-steps", "1", *_output_argv(output),
          *(["--batch-size", "1"] if quick else [])]


def run(args) -> dict:
  limits = QUICK_LIMITS if args.quick else LIMITS
  os.makedirs(args.output_dir, exist_ok=True)
  report = {"quick": args.quick, "kinds": _kinds(args), "sections": {}}

  def save(name, record):
    report["sections"][name] = record
    # The device as the devices section found it: this parent process never
    # initialises JAX's backend (it would hold the accelerator's memory).
    dev = report["sections"].get("devices", {})
    device = (f"{dev.get('device_kind')} x{dev.get('num_devices')} ({dev.get('platform')}), "
              f"JAX {dev.get('jax')}" if dev.get("status") == "ok" else "unknown")
    common.write_json(os.path.join(args.output_dir, "report.json"), report, args, device)
    with open(os.path.join(args.output_dir, "report.md"), "w") as f:
      f.write(markdown(report))
    print(f"{name}: {record.get('status')}", flush=True)

  shared = os.path.join(os.path.abspath(args.output_dir), "jax_cache")
  # two_process's children compile alone (fresh, empty caches). --quick shares
  # one cache everywhere instead: on a CPU its point is that every section runs,
  # and compiling the same tiny executables five times would triple its time.
  alone = lambda name: shared if args.quick else os.path.join(args.tmp, f"cache_{name}")
  save("devices", _child("devices", args, limits["devices"], _env(shared)))
  save("roundtrip", _child("roundtrip", args, limits["roundtrip"], _env(shared)))
  for name, enc_env, dec_env in (
      ("two_process", _env(alone("encode")), _env(alone("decode"))),
      ("cpu_to_device", _env(alone("cpu"), JAX_PLATFORMS="cpu"), _env(shared))):
    t0 = time.perf_counter()
    enc = _child("encode", args, limits[name] / 2, enc_env)
    left = max(limits[name] - (time.perf_counter() - t0), 1)
    dec = _child("decode", args, left, dec_env) if enc["status"] == "ok" else enc
    save(name, {"status": dec["status"], "encode": enc, "decode": dec})
  # --quick decodes _image's size (80x48), so it reuses roundtrip's executables.
  size, image, steps = ("tiny", "80x48", "4") if args.quick else ("paper", "2000x1500", "12")
  record = {"status": "ok", "records": [], "kinds": {}}
  for kind in _kinds(args):
    bench = os.path.join(args.output_dir, f"bench_decode_{kind}.json")
    limit = limits["bench_decode"] if args.quick else DECODE_LIMITS.get(
        kind, limits["bench_decode"])
    argv = _bench_decode_argv(size, image, steps, kind, "1" if args.quick else "2", bench)
    result = _script("bench_decode", [*argv, *DECODE_ARGS.get(kind, [])], limit,
                     _env(shared))
    record["kinds"][kind] = result
    if os.path.exists(bench):
      record["records"] += json.load(open(bench))["records"]
    if result["status"] != "ok":
      record["status"] = "partial"
    save("bench_decode", record)
  train_json = os.path.join(args.output_dir, "bench_train.json")
  # --quick trains float32 only: compiling the tiny train step is most of its
  # time on a CPU, and tests/test_precision.py already trains every kind in both.
  dtypes = ["float32"] if args.quick else ["float32", "bfloat16"]
  record = _script("bench_train", _bench_train_argv(size, dtypes, train_json, args.quick),
                   limits["bench_train"], _env(shared))
  if os.path.exists(train_json):
    record["results"] = json.load(open(train_json))["results"]
  save("bench_train", record)
  return report


def markdown(report) -> str:
  s = report["sections"]
  lines = ["# Accelerator report", ""]
  dev = s.get("devices", {})
  lines.append(f"Device: {dev.get('device_kind')} x{dev.get('num_devices')} "
               f"({dev.get('platform')}), JAX {dev.get('jax')}; quick={report['quick']}")
  lines += ["", "| section | status | seconds | compilations (s) | result |",
            "|---|---|---:|---:|---|"]
  for name, rec in s.items():
    if name == "roundtrip":
      result = ", ".join(f"{k}: {'exact' if v['exact'] else 'NOT EXACT'}"
                         for k, v in rec.items() if isinstance(v, dict))
    elif name in ("two_process", "cpu_to_device"):
      dec = rec.get("decode", {})
      result = ", ".join(f"{k}: {dec[k]}" for k in report.get("kinds", ("m2t", "mt"))
                         if k in dec)
    elif name == "bench_decode":
      result = "; ".join(f"{r['model']}: transformer {r['transformer_s']:.3f} s, full "
                         f"{r['full_decode_s']:.3f} s" for r in rec.get("records", []))
    elif name == "bench_train":
      result = "; ".join(f"{r['config']} {r.get('compute_dtype', '')}: "
                         f"{r['steps_per_sec']:.3f} steps/s, "
                         f"{r['images_per_sec']:.2f} images/s"
                         + (f", MFU {r['mfu']:.1%}" if "mfu" in r else "")
                         for r in rec.get("results", []))
    else:
      result = ""
    if rec.get("status") == "timeout" or rec.get("last_progress"):
      result += f" (last: {'; '.join(_runs(rec)[-1].get('last_progress', [])[-2:])})"
    runs = _runs(rec)
    seconds = sum(r.get("seconds", r.get("limit_s", 0)) for r in runs)
    compiles = (f"{sum(r.get('compiles', 0) for r in runs)} "
                f"({sum(r.get('compile_s', 0) for r in runs):.1f})")
    lines.append(f"| {name} | {rec.get('status')} | {seconds:.1f} | {compiles} | {result} |")
  return "\n".join(lines) + "\n"


def _runs(rec) -> list:
  """The process records of a section (itself, or its encode/decode children, or
  its per-kind scripts)."""
  if "encode" in rec:
    return [rec["encode"], rec["decode"]] if rec["decode"] is not rec["encode"] else [
        rec["encode"]]
  if "kinds" in rec:
    return list(rec["kinds"].values())
  return [rec]


def build_parser():
  p = common.parser("accelerator_report", __doc__)
  common.add(p, "--output-dir", default=os.path.join("out", "accelerator_report"))
  common.add(p, "--quick", action="store_true")
  common.add(p, "--kinds", nargs="+", default=None)
  common.add(p, "--section", choices=sorted(SECTIONS), hidden=True)
  common.add(p, "--result", hidden=True)
  common.add(p, "--tmp", hidden=True)
  return p


def main(argv=None):
  args = common.parse(build_parser(), argv)
  if args.section:
    with open(args.result, "w") as f:
      json.dump(SECTIONS[args.section](args), f)
    return 0
  with tempfile.TemporaryDirectory() as tmp:
    args.tmp = tmp
    report = run(args)
  print(markdown(report))
  return 0


if __name__ == "__main__":
  sys.exit(main())
