"""Classical codecs (JPEG 4:2:0 optimised, WebP, AVIF) over a quality sweep.

    python -m experiments.classical --images DIR [--output-dir out/classical] \
        [--output-name classical] [--codecs jpeg webp avif] [--qualities 10 30 50 70 90]
        [--max-images N] [--max-side PX]

Every image is coded at every quality with Pillow (``m2t_jax.evaluation.classical``) and
measured with the same metrics as ``m2t eval``: bpp from the real file bytes,
PSNR-RGB and MS-SSIM of the decoded 8-bit image, encode and decode seconds.

Writes, into ``--output-dir`` with stem ``--output-name`` (default ``classical``):
* ``classical.<codec>.json``: one CompressAI results file per codec (one
  point per quality, sorted by bpp), readable by CompressAI's plotting tools
  and by ``python -m experiments.rd_table``;
* ``classical.json``: the same documents as one JSON list;
* ``classical.per_image.json``: every image at every setting.

AVIF runs when the installed Pillow can write it (``PIL.features``); a codec
that is asked for but missing is an error. ``--max-side`` downsizes larger
images first (Lanczos), for quick runs; the results note it.
"""

import sys

import numpy as np
from PIL import Image

from experiments import common
from m2t_jax.evaluation import classical, rd


def _downsized(item: rd.ImageItem, max_side: int) -> rd.ImageItem:
  def load():
    image = item.load()
    h, w = image.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
      return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))
  return rd.ImageItem(item.name, load)


def build_parser():
  p = common.parser("classical", __doc__)
  common.add(p, "--images", required=True)
  common.add(p, "--codecs", nargs="+", default=None, choices=classical.CODECS,
             detail="default: every codec the installed Pillow can write")
  common.add(p, "--qualities", nargs="+", type=int, default=None,
             detail="default: per-codec sweeps")
  common.add(p, "--max-images", type=int, default=0)
  common.add(p, "--max-side", type=int, default=0)
  common.add(p, "--no-progress", action="store_true")
  common.add_output(p, "classical")
  return p


def main(argv=None) -> int:
  args = common.parse(build_parser(), argv)
  output = common.output_path(args, ".json")
  try:
    items = rd.folder_images(args.images)
    if args.max_images > 0:
      items = items[:args.max_images]
    if args.max_side > 0:
      items = [_downsized(item, args.max_side) for item in items]
    codecs = args.codecs or classical.available_codecs()
    qualities = {c: args.qualities for c in codecs} if args.qualities else None
    docs, records = classical.run(items, codecs, qualities, progress=not args.no_progress)
  except (ValueError, OSError) as e:
    print(f"classical: error: {e}", file=sys.stderr)
    return 1

  stem = output[:-5]
  device = "CPU (Pillow)"  # the classical codecs never run on an accelerator
  for codec, doc in docs.items():
    doc["meta"].update({"dataset": f"folder:{args.images}", "num_inputs": len(items),
                        "max_side": args.max_side or None})
    common.write_json(f"{stem}.{codec}.json", doc, args, device)
  common.write_json(output, list(docs.values()), args, device)
  common.write_json(rd.per_image_path(output),
                    {"dataset": f"folder:{args.images}", "images": records}, args, device)
  for codec, doc in docs.items():
    r = doc["results"]
    print(f"{codec}: " + ", ".join(f"q{q} {b:.3f} bpp {p:.2f} dB" for q, b, p in
                                   zip(r["quality"], r["bpp"], r["psnr-rgb"], strict=True)))
  print(f"wrote {output}, {stem}.<codec>.json and {rd.per_image_path(output)}")
  failed = [r for r in records if "error" in r]
  if failed:
    print(f"classical: warning: {len(failed)} evaluations failed (see the per-image file)",
          file=sys.stderr)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
