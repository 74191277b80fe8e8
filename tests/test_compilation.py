"""Compilation happens once per (config, step, batch): later images reuse it."""

import collections

import jax
import numpy as np
import pytest
from skimage import data as skdata

from m2t_jax import Codec, get_config
from m2t_jax.coding import steps, tables

_EVENTS = collections.Counter()
_LOWERING = "/jax/core/compile/jaxpr_to_mlir_module_duration"  # every compile lowers once


def _listener(name, duration, **kwargs):
  del duration, kwargs
  _EVENTS[name] += 1


jax.monitoring.register_event_duration_secs_listener(_listener)


def _count_compiles(fn):
  before = _EVENTS[_LOWERING]
  fn()
  return _EVENTS[_LOWERING] - before


def _step_cache_sizes(codec):
  fns = [steps.step_fn(codec.entropy_model, codec.config)]
  # Wide tables: the number of wide elements differs between images (and a
  # random model has many), but it must not change what is compiled.
  fns.append(tables.wide_fn(codec.config))
  return [f._cache_size() for f in fns]


@pytest.mark.parametrize("kind,order", [("m2t", "qlds"), ("mt", "qlds"), ("mt", "entropy")])
def test_second_image_does_not_compile(kind, order):
  config = get_config(kind, "tiny")
  config.schedule.order = order
  # A seed no other test uses: a step function of its own, whose compilations
  # this test alone makes (the 'random' order's seed; qlds/entropy ignore it).
  config.schedule.seed = 9001
  codec = Codec.from_config(config)
  a = np.ascontiguousarray(skdata.astronaut()[:64, :80])
  b = np.ascontiguousarray(skdata.coffee()[:64, :80])
  # Warm-up compiles everything once (and shows that the counter sees compiles).
  assert _count_compiles(lambda: codec.decompress(codec.compress(a))) > 0
  assert _count_compiles(lambda: codec.decompress(codec.compress(b))) == 0

  # Another image size with the same patch count (latent 4x5 vs 4x7: 1x2 patches
  # of 4x4): E and D see new shapes, but no decode step is compiled again.
  sizes = _step_cache_sizes(codec)
  assert sizes[-1] > 0  # the wide-table path ran
  # One compilation per distinct step shape: MT one for all; M2T one per step on
  # CPU (exact widths; two shared widths on accelerators).
  model = codec.entropy_model
  expected = {"mt": 1, "m2t": config.schedule.num_steps}[kind]
  assert len({model.step_shape(i) for i in range(config.schedule.num_steps)}) == expected
  assert sizes[0] == expected
  c = np.ascontiguousarray(skdata.chelsea()[:60, :100])
  assert np.array_equal(codec.decompress(codec.compress(c)), codec.estimate(c)["reconstruction"])
  assert _step_cache_sizes(codec) == sizes
