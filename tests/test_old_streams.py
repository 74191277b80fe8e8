"""Streams written by earlier versions of the code decode to the very same
output: the shipped models' streams of a photo, and random tiny models' streams
of every kind (nested with a shrinking size schedule too). A change to a decode
path that moves any coding table by one unit breaks this (the reference streams
and digests were written once, by ``tests/data/streams/make_streams.py``)."""

import importlib.util
import json
import os

import pytest

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "streams")
_SPEC = importlib.util.spec_from_file_location("make_streams",
                                               os.path.join(HERE, "make_streams.py"))
make_streams = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(make_streams)
with open(os.path.join(HERE, "expected.json")) as f:
  EXPECTED = json.load(f)
MAKERS = {name: make for name, _, make, _ in make_streams.cases()}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_an_old_stream_decodes_to_what_it_decoded_to(name):
  with open(os.path.join(HERE, f"{name}.m2t"), "rb") as f:
    stream = f.read()
  assert len(stream) == EXPECTED[name]["bytes"]
  decoded = MAKERS[name]().decompress(stream)
  assert make_streams.digest(decoded) == EXPECTED[name]["decoded_sha256"]


def test_every_reference_stream_is_checked():
  # A case added to make_streams without rerunning it would otherwise be skipped.
  assert sorted(MAKERS) == sorted(EXPECTED)
