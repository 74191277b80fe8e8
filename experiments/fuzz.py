"""Fuzzing the decoder: mutated streams of every model kind, each under a time limit.

  python -m experiments.fuzz --mutations 10000 [--output-dir out/fuzz]

For every registered kind (random tiny models: the checks do not depend on the
weights), a few real streams (photo crops of several sizes, a 1x1 image and an
EntropyCoder latent stream) are mutated in two families:

* raw: a flipped bit, a byte changed, inserted or deleted, a truncation (the
  container CRC should catch all of them);
* forged, the CRC recomputed as an attacker would: each header field edited
  (height/width, steps, kind, order, alpha, fingerprint, latent CRC, writer
  backend/JAX, payload length, size schedule: other lengths and random exits),
  payload bytes flipped, inserted or cut, and
  whole payloads replaced by random words.

Each mutated stream is decoded (``decompress_latent`` / ``decompress``) under
``--time-limit`` seconds (SIGALRM) and classified:

* ``BitstreamError:<class>`` (refused with a message: the goal);
* ``decoded-same`` (decoded to exactly the original latent: an edit decoding
  does not read, e.g. the writer's JAX version, or a size within the same
  latent shape);
* ``decoded-different`` (a silent wrong output), ``other-exception:<class>``,
  ``timeout``: failures.

Compilation is excluded from the time limit: the forged sizes come from a fixed
list and every shape is compiled once (by decoding a valid stream of it) before
timing starts; a first decode at a new size pays XLA compilation, which is not
what this measures. Prints and saves counts by outcome and family, the slowest
case and its mutation (``<output-dir>/fuzz.json``); exits with status 1 when any
mutation failed.
"""

import collections
import dataclasses
import json
import os
import signal
import struct
import sys
import time
import zlib

import jax.numpy as jnp
import numpy as np

from experiments import common
from m2t_jax import BitstreamError, Codec, get_config
from m2t_jax.app import demo
from m2t_jax.codec import latent_size
from m2t_jax.coding import bitstream, tables
from m2t_jax.coding.steps import CodingLoop
from m2t_jax.entropy import patches, registry

# Forged image sizes (height, width): same latent shape, other latent shapes, a
# large one within the default max_pixels and ones far beyond it.
FORGED_SIZES = ((31, 50), (64, 64), (1, 1), (1024, 768), (65536, 65536), (9460, 9460))
IMAGE_SIZES = ((30, 50), (1, 1), (70, 90))
_H = struct.Struct("<4sBBBBfII16sIB3BI")  # bytes 0..47 of a stream, for forging.


class _Timeout(Exception):
  pass


def _on_alarm(signum, frame):
  raise _Timeout()


def _recrc(body: bytes) -> bytes:
  return body + struct.pack("<I", zlib.crc32(body))


def _forge(data: bytes, rng: np.random.Generator,
           forged_sizes=FORGED_SIZES) -> tuple[str, bytes]:
  """A structured edit of a stream of the current format with its CRC
  recomputed: (name, stream)."""
  fields = list(_H.unpack_from(data))
  at = bitstream.PREFIX_BYTES - 1  # the size schedule's length byte
  middle = data[_H.size:at]  # step widths and rate code, kept as they are
  schedule = data[at:at + 1 + data[at]]  # n, then n exits
  payload = data[at + len(schedule):-4]
  edit = int(rng.integers(0, 13))
  if edit == 0:
    fields[6], fields[7] = forged_sizes[int(rng.integers(0, len(forged_sizes)))]
    name = "size"
  elif edit == 1:
    fields[4] = int(rng.integers(0, 256))
    name = "steps"
  elif edit == 2:
    fields[2] = int(rng.choice([e.code for e in map(registry.get, registry.names())]
                               + [int(rng.integers(0, 256))]))
    name = "kind"
  elif edit == 3:
    fields[3] = int(rng.integers(0, 5))
    name = "order"
  elif edit == 4:
    fields[5] = float(rng.choice([fields[5] * 1.0001, 1.0, 0.0, -2.2, np.nan, np.inf]))
    name = "alpha"
  elif edit == 5:
    fp = bytearray(fields[8])
    fp[int(rng.integers(0, 16))] ^= 1 << int(rng.integers(0, 8))
    fields[8], name = bytes(fp), "fingerprint"
  elif edit == 6:
    fields[9] ^= 1 << int(rng.integers(0, 32))
    name = "latent-crc"
  elif edit == 7:
    fields[10] = int(rng.integers(0, 5))
    fields[11:14] = [int(x) for x in rng.integers(0, 256, 3)]
    name = "writer"
  elif edit == 8:
    fields[14] = int(rng.integers(0, 2**32))
    name = "payload-length"
  elif edit == 11:
    n = int(rng.choice([0, len(schedule) - 1, fields[4], int(rng.integers(0, 256))]))
    schedule = bytes([n]) + rng.integers(0, 4, n, dtype=np.uint8).tobytes()
    name = "size-schedule"
  elif edit in (9, 10) and payload:
    p = bytearray(payload)
    if edit == 9:
      p[int(rng.integers(0, len(p)))] ^= 1 << int(rng.integers(0, 8))
      name = "payload-bit"
    else:
      cut = 4 * int(rng.integers(0, len(p) // 4 + 1))
      p = p[:cut]
      name = "payload-cut"
    payload = bytes(p)
    fields[14] = len(payload)
  else:
    payload = rng.integers(0, 256, 4 * int(rng.integers(0, 64)), dtype=np.uint8).tobytes()
    fields[14], name = len(payload), "payload-random"
  return name, _recrc(_H.pack(*fields) + middle + schedule + payload)


def _raw(data: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
  """A raw mutation without fixing the CRC: (name, stream)."""
  kind = int(rng.integers(0, 5))
  pos = int(rng.integers(0, len(data)))
  out = bytearray(data)
  if kind == 0:
    out[pos] ^= 1 << int(rng.integers(0, 8))
    return "bit-flip", bytes(out)
  if kind == 1:
    out[pos] ^= int(rng.integers(1, 256))
    return "byte-change", bytes(out)
  if kind == 2:
    return "insertion", bytes(out[:pos] + bytes([int(rng.integers(0, 256))]) + out[pos:])
  if kind == 3:
    return "deletion", bytes(out[:pos] + out[pos + 1:])
  return "truncation", bytes(out[:pos])


def mutate(data: bytes, rng: np.random.Generator,
           forged_sizes=FORGED_SIZES) -> tuple[str, bytes]:
  """One mutation of ``data``, raw or forged with equal odds: (family:name, stream)."""
  if rng.random() < 0.5:
    name, out = _raw(data, rng)
    return f"raw:{name}", out
  name, out = _forge(data, rng, forged_sizes)
  return f"forged:{name}", out


@dataclasses.dataclass
class Target:
  """A stream, the function that decodes it, and the latent it holds."""
  label: str
  data: bytes
  decode: object
  latent: np.ndarray


def targets(kind: str, seed: int = 0, forged_sizes=FORGED_SIZES) -> list[Target]:
  """Streams of a random tiny model of ``kind``: photo crops, 1x1, a latent
  stream; every step compiled at every latent shape of ``forged_sizes``."""
  codec = Codec.from_config(get_config(kind, "tiny"), seed=seed)
  photo = demo.sample_images(["chelsea"])[0][1]
  out = []
  for h, w in IMAGE_SIZES:
    image = np.ascontiguousarray(photo[:h, :w])
    data = codec.compress(image)
    out.append(Target(f"{kind}:image{h}x{w}", data, codec.decompress_latent,
                      codec.analyze(image)))
  y = out[0].latent[0]
  coder = codec.entropy_coder
  out.append(Target(f"{kind}:latent{y.shape[0]}x{y.shape[1]}", coder.compress(y),
                    lambda d: coder.decompress(d)[None], y[None]))
  # Compile every step at every forged latent shape once (untimed).
  shapes = {latent_size(h, w) for h, w in forged_sizes if h * w <= codec.max_pixels}
  shapes |= {(h, w) for h, w in forged_sizes if h * w <= coder.max_cells}
  for h, w in sorted(shapes):
    _, valid = patches.to_patches(jnp.zeros((1, h, w, 1), jnp.int32), codec.config.patch_size)
    zeros = np.zeros(valid.shape + (codec.config.latent_channels,), np.int64)
    for step in CodingLoop(coder.scheduled(), coder.params, codec.config, np.asarray(valid)):
      tables.wide_tables(step.mixture, np.arange(1), codec.config)  # compiled per shape
      step.feed(step.take(zeros))
  return out


def classify(target: Target, data: bytes, time_limit: float) -> tuple[str, float]:
  """(outcome, seconds) of decoding ``data`` under ``time_limit`` seconds. A
  decode that times out is tried once more: the first may have compiled a
  program for a shape the warm-up did not (wide tables of a new element count,
  seconds on a loaded 2-core CPU), while a decode that hangs times out again."""
  outcome, seconds = _classify_once(target, data, time_limit)
  if outcome == "timeout":
    outcome, seconds = _classify_once(target, data, time_limit)
  return outcome, seconds


def _classify_once(target: Target, data: bytes, time_limit: float) -> tuple[str, float]:
  signal.signal(signal.SIGALRM, _on_alarm)
  signal.setitimer(signal.ITIMER_REAL, time_limit)
  t0 = time.perf_counter()
  try:
    latent = target.decode(data)
    outcome = ("decoded-same" if np.shape(latent) == target.latent.shape
               and np.array_equal(latent, target.latent) else "decoded-different")
  except _Timeout:
    outcome = "timeout"
  except BitstreamError as e:
    outcome = f"BitstreamError:{type(e).__name__}"
  except Exception as e:  # noqa: BLE001 - counted as a failure, not hidden
    outcome = f"other-exception:{type(e).__name__}"
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
  return outcome, time.perf_counter() - t0


FAILURES = ("decoded-different", "other-exception", "timeout")


def run(mutations: int, seed: int = 0, time_limit: float = 5.0,
        kinds: list[str] | None = None, forged_sizes=FORGED_SIZES) -> dict:
  """Fuzzes ``mutations`` streams spread over ``kinds`` (default: every kind)."""
  rng = np.random.default_rng(seed)
  all_targets = [t for kind in (kinds or registry.names())
                 for t in targets(kind, forged_sizes=forged_sizes)]
  by_outcome = collections.Counter()
  by_family = collections.defaultdict(collections.Counter)
  slowest = {"seconds": 0.0}
  failures = []
  t_start = time.perf_counter()
  for i in range(mutations):
    target = all_targets[i % len(all_targets)]
    family, data = mutate(target.data, rng, forged_sizes)
    outcome, seconds = classify(target, data, time_limit)
    by_outcome[outcome] += 1
    by_family[family][outcome] += 1
    if seconds > slowest["seconds"]:
      slowest = {"seconds": seconds, "target": target.label, "mutation": family,
                 "outcome": outcome, "bytes": len(data)}
    if outcome.startswith(FAILURES) and len(failures) < 20:
      failures.append({"target": target.label, "mutation": family, "outcome": outcome,
                       "stream_hex": data.hex()})
  return {"mutations": mutations, "seed": seed, "time_limit_s": time_limit,
          "kinds": kinds or list(registry.names()),
          "targets": [t.label for t in all_targets],
          "total_s": time.perf_counter() - t_start,
          "by_outcome": dict(by_outcome.most_common()),
          "by_mutation": {k: dict(v) for k, v in sorted(by_family.items())},
          "slowest": slowest,
          "failures": sum(v for k, v in by_outcome.items() if k.startswith(FAILURES)),
          "failure_examples": failures}


def build_parser():
  p = common.parser("fuzz", __doc__)
  common.add(p, "--mutations", type=int, default=10000)
  common.add(p, "--seed", type=int, default=0)
  common.add(p, "--time-limit", type=float, default=5.0)
  common.add(p, "--kinds", nargs="*", default=None)
  common.add_output(p, "fuzz")
  return p


def main(argv=None):
  args = common.parse(build_parser(), argv)
  import jax  # noqa: PLC0415
  report = run(args.mutations, args.seed, args.time_limit, args.kinds)
  report["device"] = f"{jax.devices()[0].device_kind}, {os.cpu_count()} CPUs, JAX {jax.__version__}"
  report["command"] = common.command(args)
  print(json.dumps({k: v for k, v in report.items() if k != "failure_examples"}, indent=1))
  common.write_json(common.output_path(args, ".json"), report, args)
  return 1 if report["failures"] else 0


if __name__ == "__main__":
  sys.exit(main())
