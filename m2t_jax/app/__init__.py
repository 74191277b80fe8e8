"""The application: what a user runs, built on the library.

* ``cli``: the ``m2t`` command (compress, decompress, info, demo, summary, eval).
* ``info``: ``m2t info``, the report of a stream's header.
* ``demo``: ``m2t demo``, the shipped models on sample photos beside JPEG and WebP.
* ``summary``: ``m2t summary``, a config and its parameter counts per part
  (also ``python -m m2t_jax.app.summary KIND [SIZE]``).

The library lives beside it: ``m2t_jax.codec`` (``Codec``), ``m2t_jax.models``
(the shipped models), ``m2t_jax.evaluation`` (RD evaluation, metrics, BD-rate,
classical codecs).
"""
