"""python -m experiments.bench_decode: argument handling that must fail before any timing."""

import json
import os

import pytest
from conftest import load_experiment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_shipped_weights_refuse_an_unshipped_kind_before_timing(tmp_path):
  # No nested model ships: --weights shipped must say so at once, not after
  # timing the kinds before it (it once crashed there and wrote no file).
  manifest = json.load(open(os.path.join(ROOT, "m2t_jax/models/manifest.json")))
  shipped = {m["kind"] for m in manifest["models"].values()}
  assert "nested" not in shipped and "m2t" in shipped
  out = tmp_path / "bench"
  with pytest.raises(SystemExit, match="no shipped model of kind nested") as info:
    load_experiment("bench_decode").main(
        ["--size", "small", "--weights", "shipped", "--kinds", "m2t", "nested",
         "--image-size", "32x32", "--decode-steps", "2", "--output-dir", str(out)])
  for kind in shipped:  # the message lists what does ship
    assert kind in str(info.value)
  assert not out.exists()  # nothing written, not even the output folder
