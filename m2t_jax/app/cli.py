"""The ``m2t`` command.

  m2t compress IN OUT [--checkpoint DIR | --config SPEC [--seed N]] [--size-schedule S]
               [--quality Q | --target-bpp B | --target-size BYTES]
               [--max-pixels N] [--effort N] [--refine-steps N] [--refine-lr LR]
               [--refine-lmbda L]
  m2t decompress IN OUT [--checkpoint DIR | --config SPEC [--seed N]] [--max-pixels N]
  m2t info FILE
  m2t demo [--output DIR]
  m2t summary CONFIG [SIZE]
  m2t eval (--images DIR | --tfds NAME:SPLIT) (--checkpoint DIR [DIR ...] | --config SPEC)
           --output results.json [--qualities Q ...] [--effort N] [--refine-steps N]
           [--refine-lr LR] [--refine-lmbda L]

IN for compress is any image Pillow reads (PNG, JPEG, ...); greyscale, palette and
16-bit images are converted to RGB and alpha is dropped (a note is printed). OUT
of decompress must end in .png (the image is written as lossless PNG).
``--checkpoint`` names a folder written by ``Codec.save``, a training workdir
(``python -m m2t_jax.train --workdir``: its exported model if the run finished,
else its latest checkpoint; it says which), a shipped model
(``m2t_jax/models/manifest.json``), a model kind ('m2t': the shipped model of
that kind, the default one if it is) or KIND:SIZE (random weights); without it
the default shipped model is used (``m2t_jax/model_source.py`` resolves them all).
``--config m2t:tiny`` gives a randomly initialised model instead, for trying the
pipeline. ``decompress`` refuses a stream whose header claims more than
``--max-pixels`` pixels (default 89,478,485, Pillow's decompression-bomb limit)
before allocating anything; raise it for large images you trust. ``compress``
refuses images above the same ``--max-pixels`` (their stream would be refused by a
decoder with the default limit), from the file's header, before decoding it.
``decompress`` and ``info`` read a file no further than its header's declared length.
``compress --size-schedule`` picks the decode-time model sizes of a nested model
(kind 'nested'): 'full', 'fast', 'smallest' or one exit index per step ('2,2,1,0'),
each optionally with an MLP width index for width-nested models ('2:0,2:1,1:2,0:2');
the stream records it and ``m2t info`` shows it. Other kinds refuse it.
``compress`` and ``eval`` refine each image's latent before coding it
(``m2t_jax/refine.py``: gradient steps on the model's RD loss). ``--effort N``
picks how hard they search, from 0 (E's latent as is, the fastest; the Python
API's default) to ``refine.MAX_EFFORT`` (default ``refine.DEFAULT_EFFORT``;
docs/results/effort.md); ``--refine-steps`` and ``--refine-lr`` override the
level's settings, for experiments. It costs encoding time only; decoding is the
same.
A variable-rate model (one trained with ``variable_rate``: ``m2t info`` shows a
quality for its streams) codes at ``--quality Q``, 0 (smallest files) to 100 (best
images; default ``model.DEFAULT_QUALITY`` = 50), where quality Q is the RD
trade-off lambda = lmbda_min * (lmbda_max / lmbda_min)^(Q/100) of its training
range; or at a size: ``--target-bpp B`` / ``--target-size BYTES`` search the
quality (``m2t_jax/rate_target.py``: within 3%, or the nearest reachable, said).
``m2t eval --qualities Q ...`` draws one RD point per quality from each such
model (default for a variable-rate model: ``eval_models.EVAL_QUALITIES``). Fixed-rate models
refuse all of these.
Errors print one line to stderr and exit with status 1 (bad input) or 2 (usage).
"""

import argparse
import os
import sys

from m2t_jax.evaluation import eval_models


def __getattr__(name):
  """DEFAULT_REFINE_STEPS, DEFAULT_REFINE_LR: the settings ``compress`` and
  ``eval`` refine with unless told (the default effort level's), read from
  m2t_jax/refine.py only when asked (``m2t --help`` imports no JAX)."""
  if name in ("DEFAULT_REFINE_STEPS", "DEFAULT_REFINE_LR"):
    from m2t_jax import refine
    settings = refine.EFFORTS[refine.DEFAULT_EFFORT]
    return settings.steps if name == "DEFAULT_REFINE_STEPS" else settings.learning_rate
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _refine(args):
  """The RefineSettings of --effort, with --refine-steps / --refine-lr /
  --refine-lmbda where given. ValueError (one line) for a bad value."""
  import dataclasses

  from m2t_jax import refine
  effort = refine.DEFAULT_EFFORT
  if args.effort is not None:
    try:
      effort = int(args.effort)
    except ValueError:
      raise ValueError(f"--effort must be an integer from 0 to {refine.MAX_EFFORT}, got "
                       f"{args.effort!r}") from None
  try:
    effort = refine.check_effort(effort)
  except ValueError as e:
    raise ValueError(f"--effort: {e}") from None
  settings = refine.RefineSettings.for_effort(effort, args.refine_lmbda)
  changes = {"steps": args.refine_steps, "learning_rate": args.refine_lr}
  return dataclasses.replace(settings, **{k: v for k, v in changes.items() if v is not None})


def _codec(args):
  """The Codec of --checkpoint or --config (``model_source``)."""
  from m2t_jax import model_source
  if args.checkpoint and args.config:
    raise ValueError("give either --checkpoint or --config, not both")
  if args.config:
    return model_source.random_model(args.config, seed=args.seed).load()
  source = model_source.resolve(args.checkpoint)
  if source.note:
    print(f"m2t: note: {source.note}", file=sys.stderr)
  return source.load()


def _compress(args):
  from m2t_jax import images
  from m2t_jax.coding import rate_code
  refine = _refine(args)  # impossible settings fail before any work
  codec = _codec(args)
  codec.max_pixels = args.max_pixels
  from PIL import Image
  # Pillow refuses images above twice its own limit before ours is asked: lift it
  # to ours (this process only), so that --max-pixels alone decides.
  if Image.MAX_IMAGE_PIXELS is not None:  # None: the check is off already
    Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS, args.max_pixels)
  image, notes = images.read_rgb(args.input, max_pixels=args.max_pixels)
  for note in notes:
    print(f"m2t: note: {note}", file=sys.stderr)
  if args.target_bpp is not None or args.target_size is not None:
    data, report = codec.compress_to_target(image, args.target_bpp, args.target_size,
                                            args.size_schedule, refine)
    if not report.reached:
      print(f"m2t: note: {report.message}", file=sys.stderr)
    quality = report.quality
  else:
    data = codec.compress(image, size_schedule=args.size_schedule, refine=refine,
                          quality=args.quality)
    quality = rate_code.quality_of_code(codec.read_header(data).rate_code)
  with open(args.output, "wb") as f:
    f.write(data)
  h, w = image.shape[:2]
  at = "" if quality is None else f" at quality {quality:.2f}"
  print(f"{args.input} -> {args.output}: {len(data)} bytes, "
        f"{8 * len(data) / (h * w):.4f} bpp{at}")


# Files whose first bytes are an m2t_jax stream of another format version (old
# versions, whose layout this reader does not parse, or a corrupted version
# byte) are read up to this many bytes, so that unpack can name the version.
_UNPARSED_VERSION_BYTES = 1 << 24


def _read_stream(path: str) -> bytes:
  """The bytes of the stream file at ``path``, read no further than its header
  declares (plus one byte, so that unpack sees trailing bytes): ``/dev/zero``, a
  10 GB video or a forged length in a short file cost a few bytes of memory, not
  the whole file."""
  from m2t_jax.coding import bitstream
  with open(path, "rb") as f:
    data = f.read(bitstream.PREFIX_BYTES)
    declared = bitstream.declared_length(data)
    if declared is not None:
      data += f.read(max(declared - len(data), 0) + 1)
    elif data[:4] == bitstream.MAGIC and len(data) == bitstream.PREFIX_BYTES:
      data += f.read(_UNPARSED_VERSION_BYTES)
  return data  # otherwise too short or no stream: unpack says which


def _decompress(args):
  from m2t_jax import images
  if not args.output.lower().endswith(".png"):  # before any work
    raise ValueError(f"OUT must be a .png file (the decoded image is written as "
                     f"lossless PNG), got {args.output!r}")
  data = _read_stream(args.input)
  codec = _codec(args)
  codec.max_pixels = args.max_pixels
  image = codec.decompress(data)
  images.write_png(args.output, image)
  print(f"{args.input} -> {args.output}: {image.shape[1]}x{image.shape[0]}")


def _demo(args):
  from m2t_jax.app import demo
  demo.main(args.output)


def _info(args):
  from m2t_jax.app import info
  from m2t_jax.coding import bitstream
  data = _read_stream(args.input)
  header, payload = bitstream.unpack(data)
  print(info.describe(header, len(payload), version=data[4]))


def _summary(args):
  from m2t_jax import configs
  from m2t_jax.app import summary
  print(summary.format_summary(configs.load_config(args.config, args.size)))


def _eval(args):
  from m2t_jax.evaluation import rd
  refine = _refine(args)  # impossible settings fail before hours of evaluation
  for path in (args.output, rd.per_image_path(args.output)):  # ... and so does this
    if os.path.isdir(path):
      raise ValueError(f"--output {args.output!r}: {path!r} is a folder; give a file "
                       "name such as results.json")
  codecs = eval_models.eval_codecs(args.checkpoint, args.config, args.seed, refine,
                                   args.qualities)
  if args.images:
    items, dataset = rd.folder_images(args.images, args.split), f"folder:{args.images}"
  else:
    if args.split != "all":
      raise ValueError("--split selects files of an --images folder; a TFDS split is "
                       "named in --tfds NAME:SPLIT")
    items = rd.tfds_images(args.tfds, args.tfds_data_dir, args.tfds_image_key)
    dataset = f"tfds:{args.tfds}"
  if args.max_images > 0:
    items = items[:args.max_images]
  results, per_image = rd.run(codecs, items, args.output, dataset, name=args.name,
                              progress=not args.no_progress, warmup=not args.no_warmup,
                              split=args.split)
  failed = [r for r in per_image["images"] if "error" in r]
  r = results["results"]
  for i, label in enumerate(r["checkpoint"]):
    print(f"{label}: {r['bpp'][i]:.4f} bpp (estimated {r['estimated_bpp'][i]:.4f}), "
          f"{r['psnr-rgb'][i]:.2f} dB, MS-SSIM {r['ms-ssim-rgb'][i]:.4f}, "
          f"enc {r['encoding_time'][i]:.3f} s, dec {r['decoding_time'][i]:.3f} s")
  print(f"wrote {args.output} and {rd.per_image_path(args.output)}")
  if failed:
    print(f"m2t: warning: {len(failed)} of {len(per_image['images'])} image evaluations "
          f"failed (listed in {rd.per_image_path(args.output)})", file=sys.stderr)


def _positive_int(text: str) -> int:
  value = int(text)  # argparse turns a ValueError here into a usage error
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
  return value


def _refine_arguments(p):
  p.add_argument("--effort", default=None, metavar="N",
                 help="encoder effort, 0 to 3 (default 1): 0 codes E's latent as is "
                      "(fastest); higher levels search longer for a latent of lower RD "
                      "loss (slower encoding, same decoding; m2t_jax/refine.py EFFORTS, "
                      "docs/results/effort.md)")
  p.add_argument("--refine-steps", type=int, default=None,
                 help="for experiments: the refinement's gradient steps per image, "
                      "instead of the effort level's (0: off)")
  p.add_argument("--refine-lr", type=float, default=None,
                 help="for experiments: its initial step size, instead of the effort "
                      "level's")
  p.add_argument("--refine-lmbda", type=float, default=None,
                 help="its RD trade-off (default: the model's config.lmbda; give the "
                      "autoencoder's for a workdir of a run that trained only the entropy "
                      "model or the decoder and whose lmbda field is not its "
                      "autoencoder's)")


def _parser():
  parser = argparse.ArgumentParser(prog="m2t", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  for name, func, helptext in (("compress", _compress, "image file -> .m2t"),
                               ("decompress", _decompress, ".m2t -> PNG")):
    p = sub.add_parser(name, help=helptext)
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--checkpoint", default=None,
                   help="folder written by Codec.save, training workdir, shipped model, "
                        "model kind or KIND:SIZE (default: the default shipped model)")
    p.add_argument("--config", default=None,
                   help="random model from a config, e.g. m2t:tiny (testing only)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --config model")
    if name == "compress":
      p.add_argument("--size-schedule", default=None,
                     help="nested models: the exit (and MLP width) of each decode "
                          "step, a name ('full', 'fast', 'smallest') or indices "
                          "'2,2,1,0' / 'exit:width' pairs '2:0,2:1,1:2,0:2' "
                          "(default: the model's)")
      rate = p.add_mutually_exclusive_group()
      rate.add_argument("--quality", type=float, default=None, metavar="Q",
                        help="variable-rate models: 0 (smallest) to 100 (best), "
                             "default 50")
      rate.add_argument("--target-bpp", type=float, default=None, metavar="B",
                        help="variable-rate models: the quality whose stream is "
                             "nearest B bits per pixel (within 3%%, or said)")
      rate.add_argument("--target-size", type=float, default=None, metavar="BYTES",
                        help="variable-rate models: the quality whose stream is "
                             "nearest BYTES bytes (within 3%%, or said)")
      _refine_arguments(p)
    from m2t_jax.coding.bitstream import DEFAULT_MAX_PIXELS
    p.add_argument("--max-pixels", type=_positive_int, default=DEFAULT_MAX_PIXELS,
                   help=("refuse streams claiming more pixels than this" if name == "decompress"
                         else "refuse images of more pixels than this (a decoder with "
                              "the default limit would refuse their stream)")
                   + f" (default {DEFAULT_MAX_PIXELS}, Pillow's decompression-bomb limit)")
    p.set_defaults(func=func)
  p = sub.add_parser("demo", help="shipped models on sample photos, beside AVIF, WebP "
                                  "and JPEG at the same size")
  p.add_argument("--output", default="m2t_demo", help="output folder")
  p.set_defaults(func=_demo)
  p = sub.add_parser("info", help="print the header of a .m2t file")
  p.add_argument("input")
  p.set_defaults(func=_info)
  p = sub.add_parser("summary", help="print a config and its parameter counts")
  p.add_argument("config", help="KIND[:SIZE] (a model kind, e.g. m2t:tiny) | "
                                "path/to/config.py[:SIZE]")
  p.add_argument("size", nargs="?", default=None, help="paper | small | tiny")
  p.set_defaults(func=_summary)
  p = sub.add_parser("eval", help="rate-distortion evaluation -> CompressAI-style JSON")
  source = p.add_mutually_exclusive_group(required=True)
  source.add_argument("--images", metavar="DIR", help="folder of PNG/JPEG images")
  source.add_argument("--tfds", metavar="NAME:SPLIT",
                      help="prepared array_record TFDS split, e.g. kodak:test")
  p.add_argument("--tfds-data-dir", default=None, help="TFDS data_dir")
  p.add_argument("--tfds-image-key", default="image", help="image feature of --tfds")
  p.add_argument("--checkpoint", nargs="+", default=None,
                 help="folders written by Codec.save, training workdirs (their "
                      "exported model, else their latest checkpoint), shipped models, "
                      "model kinds or KIND:SIZE; one RD point each (default: every "
                      "shipped model of the default model's kind)")
  p.add_argument("--config", default=None,
                 help="random model from a config, e.g. m2t:tiny (testing only)")
  p.add_argument("--seed", type=int, default=0, help="seed of the --config model")
  p.add_argument("--output", required=True,
                 help="results JSON; the per-image file goes beside it (.per_image.json)")
  p.add_argument("--name", default=None, help="curve name in the results file")
  p.add_argument("--split", choices=("all", "train", "val", "test"), default="all",
                 help="only this fixed split of the --images folder (by file name: "
                      "m2t_jax/evaluation/splits.py; val decides choices, test is only "
                      "measured); recorded in the results (default: all)")
  p.add_argument("--max-images", type=int, default=0, help="only the first N images")
  p.add_argument("--qualities", type=float, nargs="+", default=None, metavar="Q",
                 help="variable-rate models: one RD point per quality, 0..100 "
                      "(default for them: "
                      + " ".join(f"{q:g}" for q in eval_models.EVAL_QUALITIES) + ")")
  p.add_argument("--no-warmup", action="store_true",
                 help="time the first image of each size with its compilation")
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  _refine_arguments(p)
  p.set_defaults(func=_eval)
  return parser


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  try:
    args.func(args)
  except (ValueError, OSError) as e:  # BitstreamError, ImageError, ImageFileError, I/O
    message = str(e) if not isinstance(e, OSError) or not e.filename else (
        f"{e.strerror}: {e.filename}" if e.strerror else str(e))
    print(f"m2t: error: {message}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  raise SystemExit(main())
