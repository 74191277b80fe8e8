"""Nested M2T config (``entropy/nested.py``). Usage:
`--config=m2t_jax/configs/nested.py:small` (paper | small | tiny).

The M2T fields of ``common.py`` plus ``nested``: depth exits after about L/3,
2L/3 and L blocks (docs/architecture.md), their training weights, and the encoder's
schedules. ``tiny`` has 3 blocks (M2T tiny has 2) so that it has three exits.
"""

import ml_collections

from m2t_jax.configs import common


def get_config(size: str = "paper"):
  c = common.get_base_config("nested", size)
  size = c.size  # without the options ('small,variable_rate' -> 'small')
  if size == "tiny":
    c.transformer.num_layers = 3
  c.nested = ml_collections.ConfigDict()
  # Blocks before each exit, increasing, the last = transformer.num_layers.
  c.nested.exit_layers = {"paper": (4, 8, 12), "small": (1, 2, 4),
                          "tiny": (1, 2, 3)}[size]
  # Training loss = sum_e w_e bits_e / sum_e w_e [ours: equal, as MaGNeTS trains
  # its nested sizes jointly with equal weight].
  c.nested.exit_weights = (1.0, 1.0, 1.0)
  # The encoder's default schedule (a name or exit indices; the stream stores
  # the indices) and the exits of 'fast' (() = the exit before the last at every
  # step: the best time saved per % of rate; m2t_jax/entropy/nested.py).
  c.nested.size_schedule = "full"
  c.nested.fast_schedule = ()
  # Width nesting (MatFormer-style): the MLP hidden widths, as fractions of
  # transformer.mlp_dim, decreasing from 1.0; each decode step runs one of them
  # with every depth exit. (1.0,) = depth nesting only; e.g. (1.0, 0.5, 0.25).
  c.nested.mlp_widths = (1.0,)
  return c
