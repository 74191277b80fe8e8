"""The accelerator report: one command, a folder of JSON + markdown.

  python experiments/accelerator_report.py --out out/accelerator        # GPU/TPU host
  python experiments/accelerator_report.py --out /tmp/acc --quick       # CPU check

Sections, each in its own fresh process under its own time limit (seconds, full
mode; a section that runs out is recorded as ``timeout`` and the next one
starts, so one slow part cannot eat the rest; ``report.json`` is rewritten
after every section):

| section       | limit | what                                                       |
|---------------|------:|------------------------------------------------------------|
| devices       |    20 | platform, device kind and count, JAX version               |
| roundtrip     |    80 | every registered kind (its shipped model, else random       |
|               |       | weights of the size below): compress + decompress on the   |
|               |       | device, decoded image == ``estimate`` reconstruction        |
| two_process   |    80 | encode in one fresh process, decode in another (device)    |
| cpu_to_device |    80 | encode on the CPU (JAX_PLATFORMS=cpu), decode on the       |
|               |       | device: exact, or DecodeMismatchError; a wrong image fails |
| bench_decode  |   180 | ``bench_decode.py`` paper config, 2000x1500, S = 12, each  |
|               |       | kind in its own process: MT 50, M2T 60, GroupedMixer 70 s   |
| bench_train   |    80 | ``bench_train.py`` paper config: steps/s, images/s, MFU,   |
|               |       | float32 (and bfloat16 once ``compute_dtype`` exists)        |

Total 520 s of limits (three registered kinds) plus start-up: under 9 minutes
on one H100. ``--quick`` uses the tiny configs, small images and limits of 400 s
per section, for a CPU check (measured: about 9 minutes on the 2-core CPU VM).
The codec's GPU settings are those of ``m2t_jax/coding/determinism.py``.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIMITS = {"devices": 20, "roundtrip": 80, "two_process": 80, "cpu_to_device": 80,
          "bench_decode": 60, "bench_train": 80}
# bench_decode runs once per kind, each under its own limit (the kinds with more
# steps compile more executables); other kinds get LIMITS["bench_decode"].
DECODE_LIMITS = {"mt": 50, "m2t": 60, "grouped": 70}
QUICK_LIMITS = {k: 400 for k in LIMITS}  # a 2-core CPU compiles slowly


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


# --- sections, run in a child process -------------------------------------------


def section_devices(args):
  import jax
  d = jax.devices()[0]
  return {"platform": d.platform, "device_kind": d.device_kind,
          "num_devices": jax.device_count(), "jax": jax.__version__}


def section_roundtrip(args):
  import numpy as np
  from m2t_jax.entropy import registry
  image, out = _image(args.quick), {}
  for kind in registry.names():
    codec, name = _codec(kind, args.quick)
    t0 = time.perf_counter()
    data = codec.compress(image)
    t1 = time.perf_counter()
    decoded = codec.decompress(data)
    t2 = time.perf_counter()
    exact = bool(np.array_equal(decoded, codec.estimate(image)["reconstruction"]))
    out[kind] = {"model": name, "exact": exact, "bytes": len(data),
                 "encode_s_first": t1 - t0, "decode_s_first": t2 - t1}
  return out


def section_encode(args):
  """Child of two_process / cpu_to_device: writes streams and expected images."""
  import numpy as np
  image = _image(args.quick)
  out = {}
  for kind in ("m2t", "mt"):
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
  for kind in ("m2t", "mt"):
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


def _child(section, args, limit, env=None, extra=()):
  """Runs one section in a fresh process; returns its JSON or an error record."""
  with tempfile.NamedTemporaryFile("r", suffix=".json") as result:
    cmd = [sys.executable, os.path.abspath(__file__), "--section", section,
           "--result", result.name, "--tmp", args.tmp, *(["--quick"] if args.quick else []),
           *extra]
    t0 = time.perf_counter()
    try:
      proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=limit, check=False)
    except subprocess.TimeoutExpired:
      return {"status": "timeout", "limit_s": limit}
    seconds = time.perf_counter() - t0
    if proc.returncode:
      return {"status": "error", "seconds": seconds, "stderr": proc.stderr[-2000:]}
    return {"status": "ok", "seconds": seconds, **json.load(open(result.name))}


def _script(name, argv, limit):
  t0 = time.perf_counter()
  try:
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", name), *argv],
                          cwd=ROOT, capture_output=True, text=True, timeout=limit,
                          check=False)
  except subprocess.TimeoutExpired:
    return {"status": "timeout", "limit_s": limit}
  status = "ok" if proc.returncode == 0 else "error"
  return {"status": status, "seconds": time.perf_counter() - t0,
          **({"stderr": proc.stderr[-2000:]} if status == "error" else {})}


def run(args) -> dict:
  limits = QUICK_LIMITS if args.quick else LIMITS
  os.makedirs(args.out, exist_ok=True)
  report = {"quick": args.quick, "sections": {}}

  def save(name, record):
    report["sections"][name] = record
    with open(os.path.join(args.out, "report.json"), "w") as f:
      json.dump(report, f, indent=1)
    with open(os.path.join(args.out, "report.md"), "w") as f:
      f.write(markdown(report))
    print(f"{name}: {record.get('status')}", flush=True)

  save("devices", _child("devices", args, limits["devices"]))
  save("roundtrip", _child("roundtrip", args, limits["roundtrip"]))
  for name, enc_env in (("two_process", None),
                        ("cpu_to_device", {**os.environ, "JAX_PLATFORMS": "cpu"})):
    t0 = time.perf_counter()
    enc = _child("encode", args, limits[name] / 2, env=enc_env)
    left = max(limits[name] - (time.perf_counter() - t0), 1)
    dec = _child("decode", args, left) if enc["status"] == "ok" else enc
    save(name, {"status": dec["status"], "encode": enc, "decode": dec})
  size, image, steps = ("tiny", "128x96", "4") if args.quick else ("paper", "2000x1500", "12")
  from m2t_jax.entropy import registry
  record = {"status": "ok", "records": [], "kinds": {}}
  for kind in registry.names():
    bench = os.path.join(args.out, f"bench_decode_{kind}.json")
    limit = limits["bench_decode"] if args.quick else DECODE_LIMITS.get(
        kind, limits["bench_decode"])
    result = _script("bench_decode.py", ["--config", size, "--image-size", image,
                                         "--steps", steps, "--model", kind, "--repeats",
                                         "2", "--output", bench], limit)
    record["kinds"][kind] = result
    if os.path.exists(bench):
      record["records"] += json.load(open(bench))["records"]
    if result["status"] != "ok":
      record["status"] = "partial"
    save("bench_decode", record)
  train_json = os.path.join(args.out, "bench_train.json")
  train_args = [f"--sizes={size}", "--steps=3", "--warmup=1", f"--output={train_json}"]
  if args.quick:
    train_args.append("--batch_size=1")
  record = _script("bench_train.py", train_args, limits["bench_train"])
  if os.path.exists(train_json):
    record["float32"] = json.load(open(train_json))["results"]
  record["bfloat16"] = "not available: no compute_dtype config field yet (issue 18)"
  save("bench_train", record)
  return report


def markdown(report) -> str:
  s = report["sections"]
  lines = ["# Accelerator report", ""]
  dev = s.get("devices", {})
  lines.append(f"Device: {dev.get('device_kind')} x{dev.get('num_devices')} "
               f"({dev.get('platform')}), JAX {dev.get('jax')}; quick={report['quick']}")
  lines += ["", "| section | status | result |", "|---|---|---|"]
  for name, rec in s.items():
    if name == "roundtrip":
      result = ", ".join(f"{k}: {'exact' if v['exact'] else 'NOT EXACT'}"
                         for k, v in rec.items() if isinstance(v, dict))
    elif name in ("two_process", "cpu_to_device"):
      dec = rec.get("decode", {})
      result = ", ".join(f"{k}: {dec[k]}" for k in ("m2t", "mt") if k in dec)
    elif name == "bench_decode":
      result = "; ".join(f"{r['model']}: transformer {r['transformer_s']:.3f} s, full "
                         f"{r['full_decode_s']:.3f} s" for r in rec.get("records", []))
    elif name == "bench_train":
      result = "; ".join(f"{r['config']}: {r['steps_per_sec']:.3f} steps/s, "
                         f"{r['images_per_sec']:.2f} images/s"
                         + (f", MFU {r['mfu']:.1%}" if "mfu" in r else "")
                         for r in rec.get("float32", []))
    else:
      result = ""
    lines.append(f"| {name} | {rec.get('status')} | {result} |")
  return "\n".join(lines) + "\n"


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", default="out/accelerator")
  p.add_argument("--quick", action="store_true")
  p.add_argument("--section", choices=sorted(SECTIONS), help=argparse.SUPPRESS)
  p.add_argument("--result", help=argparse.SUPPRESS)
  p.add_argument("--tmp", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.section:
    sys.path.insert(0, ROOT)
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
