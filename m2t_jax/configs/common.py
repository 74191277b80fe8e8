"""Config fields shared by the MT and M2T configs.

Every setting the M2T paper leaves open is a field here (tagged [inferred], with
our choice) rather than a constant in code; docs/architecture.md gives the
reasons. Sizes:

* ``paper``: the paper's model (ELIC N=256, C=192; ViT-B 12x768, 12 heads, MLP 3072;
  w_T=24, S=12, alpha=2.2, N_M=3, delta=5; batch 32 of 384x384 crops, 1M steps).
* ``small``: trains on a CPU in hours. ELIC N=64, C=96 (1/16 of the paper's
  conv MACs per pixel), a 4x256 transformer (about 1/27 of ViT-B), w_T=16 so that a
  256x256 crop is exactly one patch of 256 tokens, S=8 (the paper finds little gain
  past 8), batch 4 (training speeds: docs/results/).
* ``tiny``: for tests; every code path with the smallest shapes that still have
  several groups, several heads and a mixture of 3.
"""

import ml_collections

SIZES = ("paper", "small", "tiny")
OPTIONS = ("variable_rate",)


def get_base_config(model: str, size: str) -> ml_collections.ConfigDict:
  """The fields every kind shares, for kind name ``model`` at ``size``.

  A kind's config file (``configs/{kind}.py``) starts from this and adds or
  changes its own fields. ``size`` may carry options after commas:
  'small,variable_rate' is the small config as one variable-rate model
  (``variable_rate`` below).
  """
  size, *options = size.split(",")
  if size not in SIZES:
    raise ValueError(f"Unknown config size {size!r}: expected one of {SIZES}.")
  unknown = sorted(set(options) - set(OPTIONS))
  if unknown:
    raise ValueError(f"Unknown config option(s) {unknown}: expected some of {OPTIONS}.")

  c = ml_collections.ConfigDict()
  c.model = model
  c.size = size

  # ELIC transforms.
  c.elic = ml_collections.ConfigDict()
  c.elic.num_filters = {"paper": 256, "small": 64, "tiny": 16}[size]  # N
  # Residual bottleneck blocks per stage [inferred: 3]; tiny has one: every path
  # with fewer parameters, and each initialiser is a kernel XLA compiles, so the
  # tests start faster (docs/results/test_suite.md).
  c.elic.num_res_blocks = {"paper": 3, "small": 3, "tiny": 1}[size]
  c.latent_channels = {"paper": 192, "small": 96, "tiny": 8}[size]  # C

  # Tokens and patches.
  c.patch_size = {"paper": 24, "small": 16, "tiny": 4}[size]  # w_T
  c.embed_delta = 5.0  # inputs are y_hat / delta [paper]
  c.embed_layernorm = True  # LayerNorm after the token embedding [inferred, VCT]

  # Transformer.
  c.transformer = ml_collections.ConfigDict()
  c.transformer.num_layers = {"paper": 12, "small": 4, "tiny": 2}[size]
  c.transformer.d_model = {"paper": 768, "small": 256, "tiny": 32}[size]
  c.transformer.num_heads = {"paper": 12, "small": 4, "tiny": 2}[size]
  c.transformer.mlp_dim = {"paper": 3072, "small": 1024, "tiny": 64}[size]
  c.transformer.dropout = 0.0  # [inferred]
  # Compute dtype of the transformer and ELIC in training: 'float32' or
  # 'bfloat16' (parameters, optimizer, heads and bits stay float32; the codec
  # always runs float32). See m2t_jax/nn/precision.py.
  c.compute_dtype = "float32"

  # Mixture head.
  c.gmm = ml_collections.ConfigDict()
  c.gmm.num_mixtures = 3  # N_M [paper]
  c.gmm.scale_floor = 0.01  # sigma = floor + softplus(raw) [inferred, VCT]
  # No bin has less mass than this [inferred]. A floor of 1e-9 would be the obvious
  # choice, but the range coder's 24-bit fixed point gives every symbol at least
  # 2^-24 anyway, so a lower floor only makes the model's estimate disagree with
  # the real bits (docs/results/decode_speed.md).
  c.gmm.prob_floor = 2.0**-20
  # Coding window: integers within +-R of the rounded mixture mean get a table
  # entry, the rest are escaped (m2t_jax/coding/range_coder.py). Table building
  # costs O(R) per element; R=16 keeps it below the small transformer's time.
  c.gmm.table_radius = {"paper": 24, "small": 16, "tiny": 8}[size]
  # Two table widths [ours]: every element first gets a narrow table (radius r);
  # only elements whose narrow escape mass exceeds wide_threshold are coded with
  # the +-R table instead (a second, small batch). A trained model is confident
  # about most elements, so this cuts table building and range coding at a
  # negligible rate cost (docs/results/decode_speed.md). Elements below the
  # threshold pay at most ~2^-10 x 40 bits each in expected escapes.
  # narrow_radius = 0 (or >= table_radius): one width, R, for every element.
  c.gmm.narrow_radius = {"paper": 3, "small": 3, "tiny": 2}[size]
  c.gmm.wide_threshold = 2.0**-10

  # Schedule.
  c.schedule = ml_collections.ConfigDict()
  c.schedule.num_steps = {"paper": 12, "small": 8, "tiny": 4}[size]  # S
  c.schedule.alpha = 2.2
  c.schedule.order = "qlds"  # qlds | random | raster | entropy (MT only)
  c.schedule.seed = 0  # seed of the 'random' order

  # MT training masks: fraction of masked tokens ~ U(min, max) [inferred].
  c.mt_mask_ratio_min = 0.05
  c.mt_mask_ratio_max = 0.99

  # Rate-distortion loss and training.
  c.lmbda = 0.01 * 2.0 ** -3  # lambda on MSE over 0..255 [inferred grid]
  c.lmbda_warmup_factor = 10.0  # lambda x10 ...
  c.lmbda_warmup_fraction = 0.15  # ... for the first 15% of steps [paper]
  c.crop_size = {"paper": 384, "small": 256, "tiny": 64}[size]
  c.batch_size = {"paper": 32, "small": 4, "tiny": 2}[size]
  c.num_steps = {"paper": 1_000_000, "small": 50_000, "tiny": 60}[size]
  c.learning_rate = 1e-4
  c.warmup_steps = {"paper": 10_000, "small": 1_000, "tiny": 5}[size]
  c.lr_drop_fraction = 0.9  # LR / 10 at 90% of training [paper]
  c.adam_b1 = 0.9
  c.adam_b2 = 0.98
  c.adam_eps = 1e-9
  c.weight_decay = 0.03  # scaled by the LR schedule [inferred, VCT]
  c.grad_clip_norm = 1.0
  c.seed = 0

  # --- training / data ---
  # Input pipeline (m2t_jax/train/data.py). `source` is 'folder' (PNG/JPEG files under
  # train_dir, recursive) or 'tfds' (an array_record TFDS dataset, read through
  # tfds.data_source without TensorFlow).
  c.data = ml_collections.ConfigDict()
  c.data.source = "folder"
  c.data.train_dir = ""
  c.data.val_dir = ""  # evaluation on center crops of these images when set
  # Only the files of this fixed split of train_dir / val_dir: 'all', 'train',
  # 'val' or 'test' (by file name: m2t_jax/evaluation/splits.py).
  c.data.split = "all"
  c.data.val_split = "all"
  # Unreadable image files are skipped (one warning each, counted); more than this
  # share of a folder's files unreadable stops the run (m2t_jax/train/folder_source.py).
  c.data.max_unreadable_fraction = 0.5
  c.data.tfds_name = ""  # e.g. 'imagenet2012' or 'my_dataset/config:1.0.0'
  c.data.tfds_split = "train"
  c.data.tfds_data_dir = ""  # '' = TFDS's default (~/tensorflow_datasets)
  c.data.tfds_image_key = "image"  # the image feature of each example
  c.data.tfds_val_split = ""  # e.g. 'validation': evaluate on it (tfds source)
  c.data.val_max_images = 64  # evaluate on at most this many validation images
  c.data.num_workers = 0  # grain worker processes; 0 = decode in this process
  c.data.num_threads = 4  # grain reader threads (per process)
  c.data.prefetch_buffer_size = 64  # images decoded ahead, per process
  # Steps between checkpoints, metric logs and evaluations (0: no periodic eval;
  # a checkpoint is always written at the end and on SIGTERM).
  c.checkpoint_every = {"paper": 10_000, "small": 2_000, "tiny": 20}[size]
  c.keep_checkpoints = 3  # keep the last K checkpoints
  c.log_every = {"paper": 100, "small": 50, "tiny": 1}[size]
  c.eval_every = {"paper": 50_000, "small": 5_000, "tiny": 0}[size]
  c.eval_batch_size = 4
  # Warm start: a saved model folder (config.json + params.npz, e.g. another
  # run's workdir/model) or a shipped model name. A fresh run copies every
  # parameter whose path and shape match and logs what it did not; a run that
  # resumes from its own checkpoint ignores it. Use it to fine-tune another
  # lambda, or to give MT the autoencoder of a trained M2T.
  c.init_from = ""
  # What a run trains (m2t_jax/train/frozen.py): 'all' (joint RD training),
  # 'entropy' (only the entropy model, on precomputed latents of init_from's frozen
  # autoencoder; loss = bpp) or 'decoder' (only D, on the same frozen latents;
  # loss = lambda * MSE).
  c.train_part = "all"
  # train_part='decoder': D decodes a latent window this many cells wider on every
  # side than crop_size / 16 and the loss skips those cells wherever the window
  # lies inside the image: zeros beyond a crop's side are borders full-image
  # decoding does not have (train/frozen.py, LatentCrop).
  c.decoder_margin = 4
  # train_part='entropy' / 'decoder': each training image is also used downscaled
  # by each factor listed here (1.0 = as is; Lanczos), for more and more varied
  # latents from few photos (a downscaled photo has more detail per latent cell).
  c.frozen_scales = (1.0,)
  # Whether a warm start also copies the entropy model. False starts it from its
  # initial values (config.seed) while the autoencoder is still copied: the
  # entropy-model benchmark trains every kind this way, so that a kind that shares
  # parameter names with init_from's model gets no head start.
  c.init_entropy_model = True

  if "variable_rate" in options:
    # One model for every lambda in [lmbda_min, lmbda_max] (m2t_jax/model.py):
    # quality Q in 0..100 is lambda = lmbda_min * (lmbda_max / lmbda_min)^(Q/100).
    # 0.001 to 0.064 (six doublings; one anchor per doubling) spans about 0.1 to
    # 1 bpp for the small model on photos [our choice]. config.lmbda is the
    # default quality's (50) lambda: the gains start there.
    c.variable_rate = ml_collections.ConfigDict()
    c.variable_rate.lmbda_min = 0.001
    c.variable_rate.lmbda_max = 0.064
    c.variable_rate.anchors = 7
    c.lmbda = 0.008
  return c
