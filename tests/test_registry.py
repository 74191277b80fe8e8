"""A kind defined outside the package plugs in through the registry alone.

The toy kind below is written only against ``m2t_jax.entropy.base``: two steps
over channel slices (a factorized prior for the first half of the channels of
every cell, then the second half conditioned on the first), the shape of plan a
grouped model has. Registering it is all it takes for ``Codec``,
``EntropyCoder``, the bitstream and the training forward to work.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage import data

from m2t_jax import Codec, EntropyCoder, get_config
from m2t_jax import model as model_lib
from m2t_jax.coding import bitstream
from m2t_jax.entropy import base, gmm, registry

TOY_CODE = 250


class ChannelSplit(base.EntropyModel):
  """Step 0: channels [0, C/2) of every cell; step 1: [C/2, C) given step 0's."""
  latent_channels: int
  patch_size: int
  prob_floor: float = 2.0**-20

  one_pass_rate = True  # step_shape: the default (each step its own compilation)

  @classmethod
  def from_config(cls, config):
    return cls(config.latent_channels, config.patch_size, config.gmm.prob_floor)

  def setup(self):
    self.half = self.latent_channels // 2
    self.prior = self.param("prior", nn.initializers.normal(0.5), (self.half, 2))
    self.cond = nn.Dense((self.latent_channels - self.half) * 2)

  def _first(self, n, length):
    shape = (n, length, self.half, 1)
    return gmm.Mixture(jnp.zeros(shape),
                       jnp.broadcast_to(self.prior[:, :1], shape),
                       jnp.broadcast_to(0.5 + jax.nn.softplus(self.prior[:, 1:]), shape))

  def _second(self, first):  # (N, g, C/2) -> Mixture (N, g, C - C/2, 1)
    raw = self.cond(first / 5.0).reshape(first.shape[:2] + (-1, 1, 2))
    return gmm.Mixture(jnp.zeros(raw.shape[:-1]), raw[..., 0],
                       0.5 + jax.nn.softplus(raw[..., 1]))

  def rate(self, tokens, targets, rng=None, train=False):
    n, length, _ = tokens.shape
    bits = jnp.concatenate(
        [gmm.bits(self._first(n, length), targets[..., :self.half], self.prob_floor),
         gmm.bits(self._second(tokens[..., :self.half]), targets[..., self.half:],
                  self.prob_floor)], axis=-1)
    return base.Rate(bits, jnp.ones((n, length), bool))

  def coding_plan(self):
    cells = np.arange(self.num_tokens)
    half = self.latent_channels // 2
    return (base.PlannedStep(self.num_tokens, (0, half), cells),
            base.PlannedStep(self.num_tokens, (half, self.latent_channels), cells))

  def init_decode_state(self, valid):
    n = np.asarray(valid).shape[0]
    return {"first": jnp.zeros((n, self.num_tokens, self.latent_channels // 2))}

  def decode_step(self, state, step, shape):
    first = state["first"]
    cells = jnp.broadcast_to(jnp.arange(self.num_tokens), first.shape[:2])
    if shape == 0:  # the static step
      return cells, self._first(*first.shape[:2]), state
    return cells, self._second(first), state

  def decode_update(self, state, step, cells, values):
    if step == 0:
      return {"first": jnp.asarray(values, jnp.float32)}
    return state


def toy_config(size="tiny"):
  config = get_config("m2t", size)
  config.model = "toy_split"
  return config


@pytest.fixture
def toy_kind():
  kind = registry.register(registry.Kind("toy_split", TOY_CODE, ChannelSplit, toy_config))
  yield kind
  registry.unregister(kind.name)


def test_new_kind_round_trips(toy_kind):
  base.check_plan(ChannelSplit(8, 4).coding_plan(), 16, 8)
  image = data.astronaut()[100:180, 150:211]  # a real photo, odd width
  codec = Codec.from_config(get_config("toy_split", "tiny"), seed=3)
  assert isinstance(codec.entropy_model, ChannelSplit)
  stream = codec.compress(image)
  assert stream[5] == TOY_CODE  # the kind's own code in the header
  header = codec.read_header(stream)
  assert header.model_kind == "toy_split" and header.num_steps == 2
  est = codec.estimate(image)
  assert np.array_equal(codec.decompress(stream), est["reconstruction"])
  assert np.array_equal(codec.decompress_latent(stream), est["y_hat"])
  # The real payload is close to the model's own estimate of the same latent:
  # tables built from the plan's channel slices, not some other elements'.
  payload_bits = 8 * (len(stream) - bitstream.HEADER_BYTES)
  assert abs(payload_bits / est["bits"] - 1) < 0.1, (payload_bits, est["bits"])

  coder = EntropyCoder.from_config(toy_config(), seed=1)
  y = est["y_hat"][0]
  assert np.array_equal(coder.decompress(coder.compress(y)), y)


def test_new_kind_trains(toy_kind):
  """The training forward of the full model pays the toy's bits."""
  config = toy_config()
  model = model_lib.build_model(config)
  x = jnp.asarray(data.astronaut()[:64, :64], jnp.float32)[None]
  params = model.init(jax.random.key(0), x)["params"]
  assert set(params["entropy_model"]) == {"prior", "cond"}
  out = model.apply({"params": params}, x, rng=jax.random.key(1), train=True)
  assert np.isfinite(float(out["bpp"][0])) and float(out["bpp"][0]) > 0


def test_registry_refuses_clashes(toy_kind):
  with pytest.raises(ValueError, match="already registered"):
    registry.register(toy_kind)
  with pytest.raises(ValueError, match="taken by 'toy_split'"):
    registry.register(registry.Kind("other", TOY_CODE, ChannelSplit, toy_config))
  with pytest.raises(ValueError, match="known kinds: mt, m2t"):
    get_config("nope", "tiny")


def test_unregistered_kind_in_a_stream_is_refused(toy_kind):
  codec = Codec.from_config(get_config("toy_split", "tiny"))
  stream = codec.compress(data.astronaut()[:20, :20])
  registry.unregister("toy_split")
  with pytest.raises(bitstream.BitstreamError, match="unknown model kind byte 250"):
    bitstream.unpack(stream)


@pytest.mark.parametrize("kind", ["mt", "m2t"])
def test_builtin_plans_cover_every_element_once(kind):
  config = get_config(kind, "tiny")
  model = registry.build(config)
  plan = model.coding_plan()
  base.check_plan(plan, model.num_tokens, config.latent_channels)
  assert len(plan) == config.schedule.num_steps
  # The check can fail: drop a step and it does.
  with pytest.raises(ValueError):
    base.check_plan(plan[:-1], model.num_tokens, config.latent_channels)


def test_one_pass_rate_equals_the_coding_loop():
  """For a one_pass_rate kind (M2T), the bits of its decode steps run through the
  generic loop equal its one-pass rate: the interface's promise."""
  from m2t_jax.coding.steps import CodingLoop, element_bits  # noqa: PLC0415
  from m2t_jax.entropy import patches  # noqa: PLC0415
  codec = Codec.from_config(get_config("m2t", "tiny"), seed=2)
  assert codec.entropy_model.one_pass_rate
  y = codec.analyze(data.chelsea()[:50, :70])
  tokens, valid = patches.to_patches(jnp.asarray(y, jnp.float32), codec.config.patch_size)
  tokens, valid = np.asarray(tokens), np.asarray(valid)
  params = codec.params["entropy_model"]
  one_pass = codec.entropy_model.apply({"params": params}, tokens, tokens, method="rate").bits
  loop_bits = np.zeros_like(tokens)
  for step in CodingLoop(codec.entropy_model, params, codec.config, valid):
    group = step.take(tokens)
    step.put(loop_bits, np.asarray(element_bits(step.mixture, group,
                                                 codec.config.gmm.prob_floor)))
    step.feed(group)
  np.testing.assert_allclose(loop_bits, np.asarray(one_pass), atol=1e-4)
