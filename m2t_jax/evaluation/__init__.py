"""Evaluation library: how well a codec compresses, measured on real bytes.

* ``rd``: rate-distortion evaluation of ``Codec``s (compress, decompress,
  measure bpp, PSNR, MS-SSIM and times per image), image sources (a folder, a
  TFDS split) and CompressAI-style results JSON; behind ``m2t eval``.
* ``metrics``: PSNR-RGB and MS-SSIM of 8-bit RGB images (numpy only).
* ``bdrate``: Bjontegaard delta rate between two RD curves.
* ``classical``: JPEG, WebP and AVIF through Pillow, measured as ``rd`` measures
  the codec (the anchors of the RD tables).

The modules are imported on their own (``from m2t_jax.evaluation import rd``);
this package imports nothing, so ``metrics`` stays free of JAX.
"""
