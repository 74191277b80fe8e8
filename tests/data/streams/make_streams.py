"""Writes the reference streams of ``tests/test_old_streams.py``.

Run once, with the code whose streams must stay decodable, and never again
unless the stream format changes on purpose (a version bump):

    python tests/data/streams/make_streams.py

Each stream is the codec's output for a crop of scikit-image's ``coffee`` photo
(256 x 384: two latent patches of the small configs, one of them padded); the
expected decodings are stored as SHA-256 digests of the decoded uint8 arrays.
"""

import hashlib
import json
import os

import numpy as np
from skimage import data

from m2t_jax import Codec, EntropyCoder, get_config, models

HERE = os.path.dirname(os.path.abspath(__file__))


def image() -> np.ndarray:
  return np.ascontiguousarray(data.coffee()[:256, :384])


def latent(channels: int) -> np.ndarray:
  rng = np.random.default_rng(0)
  return rng.integers(-6, 7, (7, 9, channels))


def digest(array: np.ndarray) -> str:
  array = np.ascontiguousarray(array)
  return hashlib.sha256(array.dtype.str.encode() + str(array.shape).encode()
                        + array.tobytes()).hexdigest()


def cases():
  """(name, what, coder factory, size schedule): shipped models code the photo;
  random tiny models of every kind code a latent (their images are noise)."""
  for name in models.names():
    yield name, "image", lambda name=name: Codec.load(name), None
  for kind in ("m2t", "mt", "grouped", "nested"):
    yield (f"{kind}-tiny", "latent",
           lambda kind=kind: EntropyCoder.from_config(get_config(kind, "tiny"), seed=0), None)
  yield ("nested-tiny-fast", "latent",
         lambda: EntropyCoder.from_config(get_config("nested", "tiny"), seed=0), "fast")


def main():
  expected = {}
  for name, what, make, schedule in cases():
    coder = make()
    if what == "image":
      stream = coder.compress(image())
      decoded = coder.decompress(stream)
    else:
      stream = coder.compress(latent(coder.latent_channels), size_schedule=schedule)
      decoded = coder.decompress(stream)
    with open(os.path.join(HERE, f"{name}.m2t"), "wb") as f:
      f.write(stream)
    expected[name] = {"what": what, "size_schedule": schedule,
                      "decoded_sha256": digest(decoded), "bytes": len(stream)}
    print(name, len(stream))
  with open(os.path.join(HERE, "expected.json"), "w") as f:
    json.dump(expected, f, indent=1, sort_keys=True)


if __name__ == "__main__":
  main()
