"""Rate-distortion evaluation with real bytes, written as CompressAI results JSON.

    m2t eval --images DIR --checkpoint CKPT [CKPT ...] --output results.json
    m2t eval --tfds NAME:SPLIT --checkpoint CKPT --output results.json
    m2t eval --images DIR --config m2t:tiny --output results.json  # random model
    m2t eval --images DIR --split test --output results.json  # the folder's test split

For every checkpoint (one RD point each) and every image: compress to bytes,
decompress, and measure

* ``bpp``: 8 * len(bytes) / (H * W), the whole stream (header and CRC included);
* ``estimated_bpp``: the model's own estimate (``Codec.estimate``) of the same
  latent, without header;
* ``psnr-rgb`` and ``ms-ssim-rgb`` (``m2t_jax.evaluation.metrics``) of the 8-bit
  decoded image against the original;
* ``encoding_time`` / ``decoding_time``: wall-clock seconds of ``compress`` /
  ``decompress`` (``time.perf_counter``; encoding includes the latent
  refinement the codec is set to, ``refine_steps`` in each point). JAX compiles per image shape; by
  default one untimed round trip per new latent shape runs first (``warmup``),
  so the times are those of the compiled codec, as a user coding many images
  of one size sees them. Without warm-up the first image of each shape pays
  the compilation.

An RD point averages the per-image values over the images that succeeded
(CompressAI's convention: mean bpp, mean PSNR, not PSNR of the mean MSE). A
failing image (unreadable file, codec error) is reported on stderr and
recorded with its error in the per-image file; the run goes on.

``--split val|test|train`` evaluates only that fixed split of the folder
(``evaluation.splits``: by file name; the validation split decides choices, the
test split is only measured); ``meta`` records the split and ``num_inputs``.

Output: ``results.json`` in CompressAI's schema (so its plotting tools read
it) -- ``name``, ``description``, ``meta`` and ``results`` with one entry per
checkpoint in each list, sorted by bpp -- plus ``results.per_image.json`` with
every image's numbers. Non-finite values (the PSNR of a lossless image, the
MS-SSIM of an image smaller than 11 px) are written as null.
"""

import dataclasses
import datetime
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import tqdm

from m2t_jax.coding import rate_code
from m2t_jax.evaluation import metrics, splits

RESULT_KEYS = ("bpp", "psnr-rgb", "ms-ssim-rgb", "encoding_time", "decoding_time")
MS_SSIM_NOTE = ("per image, 5-scale MS-SSIM (Wang 2003; m2t_jax.evaluation.metrics; fewer "
                "scales, weights renormalised, for sides < 161 px: see ms_ssim_scales); "
                "averaged over images")


@dataclasses.dataclass(frozen=True)
class ImageItem:
  """An image to evaluate: a name and a loader (so a bad file fails alone)."""

  name: str
  load: Callable[[], np.ndarray]  # -> uint8 (H, W, 3)


# --------------------------------------------------------------------------- #
# Image sources.
# --------------------------------------------------------------------------- #


def folder_images(directory: str, split: str = "all") -> list[ImageItem]:
  """The PNG/JPEG files under ``directory`` (recursive, sorted), read lazily.

  Files are read with ``images.read_rgb``, as ``m2t compress`` reads them
  (greyscale/palette/16-bit converted to RGB, alpha dropped).

  Args:
    directory: the folder.
    split: 'all', or only the files of the folder's fixed 'train', 'val' or
      'test' split (``evaluation.splits``: by file name).

  Raises:
    FileNotFoundError: no such directory.
    ValueError: no image files in it (of that split), or an unknown split.
  """
  from m2t_jax import images  # noqa: PLC0415

  def loader(path):
    return lambda: images.read_rgb(path)[0]

  return [ImageItem(os.path.relpath(p, directory), loader(p))
          for p in splits.list_split(directory, split)]


def parse_tfds_spec(spec: str) -> tuple[str, str]:
  """'NAME[:VERSION]:SPLIT' -> (name, split); the split follows the last ':'."""
  name, sep, split = spec.rpartition(":")
  if not sep or not name or not split:
    raise ValueError(f"--tfds expects NAME:SPLIT (e.g. kodak:test), got {spec!r}.")
  return name, split


def tfds_images(spec: str, data_dir: str | None = None,
                image_key: str = "image") -> list[ImageItem]:
  """The images of a prepared array_record TFDS split (``tfds.data_source``).

  TFDS is imported only here. Raises ValueError (with how to fix it) when the
  dataset is missing or not in the array_record format.
  """
  from m2t_jax.train import data  # noqa: PLC0415 - grain and TFDS, only here

  name, split = parse_tfds_spec(spec)
  source = data.tfds_source(name, split, data_dir, image_key)

  def loader(i):
    return lambda: source[i]

  return [ImageItem(f"{name}[{split}]/{i}", loader(i)) for i in range(len(source))]


# --------------------------------------------------------------------------- #
# Progress and reporting.
# --------------------------------------------------------------------------- #


class Progress:
  """A tqdm bar on stderr over ``total`` items (nothing when not ``enabled``)."""

  def __init__(self, total: int, desc: str, enabled: bool = True):
    self._bar = tqdm.tqdm(total=total, desc=desc, unit="img", file=sys.stderr,
                          disable=not enabled)

  def update(self, line: str) -> None:
    """One item done; ``line`` is its summary, shown after the bar."""
    self._bar.set_postfix_str(line, refresh=False)
    self._bar.update(1)

  def write(self, message: str) -> None:
    """A message on stderr that does not break the bar."""
    self._bar.write(message, file=sys.stderr)

  def close(self) -> None:
    self._bar.close()


def finite_or_none(value):
  """JSON-safe numbers: NaN and +-inf become None, recursively."""
  if isinstance(value, dict):
    return {k: finite_or_none(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [finite_or_none(v) for v in value]
  if isinstance(value, (float, np.floating)):
    return float(value) if math.isfinite(value) else None
  if isinstance(value, np.integer):
    return int(value)
  if isinstance(value, np.bool_):
    return bool(value)
  return value


def write_json(path: str, obj) -> None:
  """Strict JSON (no NaN/Infinity tokens), indented, newline-terminated."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  with open(path, "w") as f:
    json.dump(finite_or_none(obj), f, indent=1, allow_nan=False)
    f.write("\n")


def per_image_path(output: str) -> str:
  """'results.json' -> 'results.per_image.json'."""
  stem = output[:-5] if output.endswith(".json") else output
  return stem + ".per_image.json"


def _mean(values) -> float:
  """Mean of the finite values (NaN if none): one lossless image (PSNR inf) or
  one tiny image (MS-SSIM NaN) must not void the whole point."""
  finite = [float(v) for v in values if v is not None and math.isfinite(v)]
  return float(np.mean(finite)) if finite else math.nan


def summarize(records: Sequence[dict], keys: Iterable[str] = RESULT_KEYS) -> dict:
  """Averages of per-image records (those without 'error') -> one RD point.

  Returns {key: mean over images} for each key, plus ``num_images`` (averaged)
  and ``num_failed``.
  """
  ok = [r for r in records if "error" not in r]
  point = {k: _mean(r.get(k) for r in ok) for k in keys}
  point["num_images"] = len(ok)
  point["num_failed"] = len(records) - len(ok)
  return point


def compressai_results(name: str, description: str, points: Sequence[dict],
                       meta: dict | None = None, keys: Iterable[str] = RESULT_KEYS,
                       extra_keys: Iterable[str] = ()) -> dict:
  """CompressAI's results document from RD points, sorted by bpp.

  Args:
    name, description: the curve's label and a sentence on how it was made.
    points: one dict per RD point with at least the ``keys``.
    meta: anything else worth keeping (data set, versions, settings).
    keys: the result lists (CompressAI's names).
    extra_keys: further per-point values written as lists beside them (e.g.
      'estimated_bpp', 'checkpoint', 'quality').
  """
  ordered = sorted(points, key=lambda p: (math.inf if p["bpp"] is None or not
                                          math.isfinite(p["bpp"]) else p["bpp"]))
  results = {k: [p.get(k) for p in ordered] for k in (*keys, *extra_keys)}
  return {"name": name, "description": description, "meta": dict(meta or {}),
          "results": results}


# --------------------------------------------------------------------------- #
# Evaluation.
# --------------------------------------------------------------------------- #


def image_metrics(original: np.ndarray, decoded: np.ndarray) -> dict:
  """PSNR-RGB (dB) and MS-SSIM of a decoded 8-bit image against the original."""
  h, w = original.shape[:2]
  return {"psnr-rgb": metrics.psnr_rgb(original, decoded),
          "ms-ssim-rgb": metrics.ms_ssim(original, decoded),
          "ms_ssim_scales": metrics.ms_ssim_num_scales(h, w)}


def evaluate_image(codec, image: np.ndarray, warmed: set | None = None) -> dict:
  """Compress, decompress and measure one image with one codec.

  Args:
    codec: a ``Codec``.
    image: uint8 (H, W, 3).
    warmed: latent shapes already compiled; when given, an image of a new
      shape gets one untimed round trip first and its shape is added.

  Returns:
    {height, width, bytes, bpp, estimated_bpp, psnr-rgb, ms-ssim-rgb,
    ms_ssim_scales, encoding_time, decoding_time (s), decoded_equals_estimate}.
  """
  h, w = image.shape[:2]
  if warmed is not None:
    from m2t_jax.codec import latent_size  # noqa: PLC0415 - JAX only for codecs
    shape = latent_size(h, w)  # one compilation per latent shape
    if shape not in warmed:
      # One refinement step compiles what every step runs; no need to pay them all.
      y_hat = codec.analyze(image, refine=min(codec.refine.steps, 1))
      codec.decompress(codec.compress_latent(y_hat, h, w))
      codec.estimate_latent(y_hat, h, w)
      warmed.add(shape)
  t0 = time.perf_counter()
  y_hat = codec.analyze(image)  # compress's latent (refined if codec.refine says so)
  data = codec.compress_latent(y_hat, h, w)
  t1 = time.perf_counter()
  decoded = codec.decompress(data)
  t2 = time.perf_counter()
  estimate = codec.estimate_latent(y_hat, h, w)
  record = {"height": h, "width": w, "bytes": len(data), "bpp": 8 * len(data) / (h * w),
            "estimated_bpp": estimate["bpp"]}
  record.update(image_metrics(image, decoded))
  record.update({"encoding_time": t1 - t0, "decoding_time": t2 - t1,
                 # The codec promises bit-identical decoding of its estimate's
                 # latent; a False here flags a coder mismatch.
                 "decoded_equals_estimate": bool(np.array_equal(
                     decoded, estimate["reconstruction"]))})
  return record


def evaluate_codec(codec, items: Sequence[ImageItem], label: str = "",
                   progress: bool = True, warmup: bool = True) -> list[dict]:
  """Per-image records of one codec over ``items`` (failures included).

  A failing image gives {image, checkpoint, error} and a stderr line; the
  other images are still evaluated.
  """
  bar = Progress(len(items), label or codec.name, progress)
  warmed = set() if warmup else None
  records = []
  try:
    for item in items:
      record = {"image": item.name, "checkpoint": label}
      try:
        image = item.load()
        record.update(evaluate_image(codec, image, warmed))
        line = (f"{item.name}: {record['bpp']:.4f} bpp, {record['psnr-rgb']:.2f} dB, "
                f"enc {record['encoding_time']:.2f} s, dec {record['decoding_time']:.2f} s")
      except Exception as e:  # noqa: BLE001 - any failure is recorded; the run goes on
        record["error"] = f"{type(e).__name__}: {e}"
        line = f"{item.name}: FAILED"
        bar.write(f"m2t: warning: {item.name} ({label or codec.name}) failed: "
                  f"{record['error']}")
      records.append(record)
      bar.update(line)
  finally:
    bar.close()
  return records


def _environment() -> dict:
  import jax  # noqa: PLC0415

  import m2t_jax  # noqa: PLC0415

  device = jax.devices()[0]
  return {"m2t_jax_version": m2t_jax.__version__, "jax_version": jax.__version__,
          "device": f"{device.platform}:{getattr(device, 'device_kind', '')}",
          "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def run(codecs: Sequence[tuple[str, Callable]], items: Sequence[ImageItem], output: str,
        dataset: str, name: str | None = None, progress: bool = True,
        warmup: bool = True, split: str = "all") -> tuple[dict, dict]:
  """Evaluates each codec on all items; writes ``output`` and the per-image file.

  Args:
    codecs: (label, factory) pairs; ``factory()`` returns a ``Codec``. Codecs
      are built one at a time, so only one model is in memory.
    items: the images.
    output: path of the CompressAI-schema JSON; the per-image file goes beside
      it (``per_image_path``).
    dataset: how the images were chosen ('folder:DIR', 'tfds:NAME:SPLIT').
    name: the curve's name (default: the models' config names).
    progress, warmup: see ``evaluate_codec`` / the module docstring.
    split: which split of the folder ``items`` are ('all', 'train', 'val',
      'test': ``evaluation.splits``), recorded in the meta data beside
      ``num_inputs``, the number of images.

  Returns:
    (results document, per-image document), as written.

  Raises:
    ValueError: every image failed for some codec (the files are written first).
  """
  points, per_image, kinds = [], [], []
  for label, factory in codecs:
    codec = factory()
    kinds.append(f"{codec.config.model}:{codec.config.size}")
    records = evaluate_codec(codec, items, label, progress, warmup)
    per_image.extend(records)
    point = summarize(records, (*RESULT_KEYS, "estimated_bpp"))
    s = codec.config.schedule
    point.update({"checkpoint": label, "codec": codec.name,
                  "fingerprint": codec.fingerprint.hex(), "model": codec.config.model,
                  "order": s.order, "num_steps": len(codec.entropy_model.coding_plan()),
                  "alpha": float(s.alpha),
                  "lmbda": codec.lmbda,
                  # A variable-rate model's quality (0..100), else None.
                  "quality": rate_code.quality_of_code(codec.rate_code()),
                  # The encoder's latent refinement (0 steps: E's latent as is).
                  "refine_steps": codec.refine.steps,
                  "refine_learning_rate": codec.refine.learning_rate,
                  "refine_lmbda": float(codec.refine.lmbda if codec.refine.lmbda is not None
                                        else codec.lmbda)})
    points.append(point)
    del codec
  name = name or ", ".join(dict.fromkeys(kinds))
  meta = {"dataset": dataset, "split": splits.check_split(split), "num_inputs": len(items),
          "warmup": warmup,
          "bpp": "8 * len(bytes) / (H * W), whole stream incl. header and CRC",
          "psnr-rgb": "per image, MSE over all pixels and channels of the 8-bit decoded "
                      "image; averaged over images",
          "ms-ssim-rgb": MS_SSIM_NOTE,
          "time": "seconds per image, wall clock, after warm-up" if warmup else
                  "seconds per image, wall clock, first image per shape incl. compilation",
          **_environment()}
  results = compressai_results(
      name, "m2t_jax: real range-coded bytes (header included); one point per checkpoint "
      "(and quality, for a variable-rate model)",
      points, meta, extra_keys=("estimated_bpp", "num_images", "num_failed", "checkpoint",
                                "codec", "fingerprint", "model", "order", "num_steps",
                                "alpha", "lmbda", "quality", "refine_steps",
                                "refine_learning_rate", "refine_lmbda"))
  per_image_doc = {"name": name, "meta": meta, "images": per_image}
  write_json(output, results)
  write_json(per_image_path(output), per_image_doc)
  empty = [p["checkpoint"] for p in points if p["num_images"] == 0]
  if empty:
    raise ValueError(f"every image failed for {', '.join(empty)}; see "
                     f"{per_image_path(output)}")
  return results, per_image_doc
