"""GroupedMixer config. Usage: `--config=m2t_jax/configs/grouped.py:tiny`
(paper | small | tiny); `m2t_jax.get_config("grouped", size)`.

The autoencoder, patches, mixture head, tables and training fields are the M2T
config's (``common.py``); the ``grouped`` fields below are our choices where the
GroupedMixer paper leaves them open (docs/architecture.md). A patch has k_c * k_s
groups of Q = w_T^2 / k_s tokens, so k_c times the tokens of M2T; how each size
pays for that:

* ``small``: C=96 in 4 uneven slices (16, 16, 32, 32) x the four 2x2 phases = 16
  groups of 64 tokens. k_c = 4 times M2T's tokens at a quarter of the width
  (4 x 128, MLP 512, 4 heads of 32 instead of 4 x 256), so the linear layers cost
  the same FLOPs per patch as the small M2T and the attention less (64 keys
  inner, <= 16 cross, instead of 256).
* ``paper``: C=192 in ELIC-style uneven slices (16, 16, 32, 64, 64) x the four 2x2
  phases = 20 groups of 144 tokens, with the ViT-B stack of the paper M2T (12 x
  768, 12 heads, MLP 3072): the same transformer parameters, about 5x its FLOPs
  per patch: the bet is a lower rate from channel context.
* ``tiny``: tests; 2 equal slices x a checkerboard = 4 groups of 8 tokens.

``schedule.*`` (M2T's power schedule) is not read by this kind;
``schedule.num_steps`` is set to the number of groups so that summaries and
evaluation records show the real step count.
"""

import ml_collections

from m2t_jax.configs import common
from m2t_jax.entropy import grouping


def get_config(size: str = "paper"):
  c = common.get_base_config("grouped", size)
  size = c.size  # without the options ('small,variable_rate' -> 'small')
  if size == "small":
    c.transformer.d_model = 128
    c.transformer.mlp_dim = 512

  g = c.grouped = ml_collections.ConfigDict()
  # Channel slices [inferred]: widths summing to latent_channels, coded first to
  # last (a tuple here, so that command-line overrides keep the type). Uneven,
  # small slices first as in ELIC: the first slices have the least channel
  # context, so they are thin.
  g.channel_slices = {"paper": (16, 16, 32, 64, 64), "small": (16, 16, 32, 32),
                      "tiny": (4, 4)}[size]
  # Spatial subsets [inferred]: 'phases' (the cells at each offset of a block of
  # `block` cells, offsets in `phase_order`), 'checkerboard' (anchors, then the
  # rest), or 'none' (channel groups only). Every subset has one cell per block:
  # the cross-group mixer attends within a block (the "same 2x2 cell").
  g.spatial = {"paper": "phases", "small": "phases", "tiny": "checkerboard"}[size]
  g.block = (2, 2)
  # qlds on a 2x2 block: (1,1), (0,0), (0,1), (1,0), diagonal first; or raster,
  # random (with phase_seed).
  g.phase_order = "qlds"
  g.phase_seed = 0
  # Coding order of the groups [inferred]: 'slice_major' (every subset of slice
  # 0, then slice 1, ...) or 'subset_major' (every slice at subset 0, then ...).
  g.group_order = "slice_major"
  # Layers alternate inner-group and cross-group mixers starting with this one
  # [inferred]; transformer.num_layers counts both kinds.
  g.first_mixer = "inner"
  # What a cross-group mixer sees [inferred]: 'block', every earlier group in
  # the token's block (the "same 2x2 cell"), or 'cell', only the earlier values
  # at the token's own cell (the "same spatial location"), which leaves all
  # spatial context to the inner-group mixers. 'block' sees a superset at the
  # same cost (at most G keys per token either way).
  g.cross_scope = "block"

  c.schedule.num_steps = _num_groups(c)  # informative only (module docstring)
  return c


def _num_groups(c) -> int:
  g = c.grouped
  groups = grouping.make_grouping(c.patch_size, c.latent_channels, g.channel_slices,
                                  g.spatial, g.block, g.phase_order, g.phase_seed)
  return groups.num_groups
