"""Classical codecs (JPEG 4:2:0 optimised, WebP, AVIF) over a quality sweep.

    python experiments/classical.py --images DIR --output out/classical.json \
        [--codecs jpeg webp avif] [--qualities 10 30 50 70 90] [--max-images N]
        [--max-side PX]

Every image is coded at every quality with Pillow (``m2t_jax.evaluation.classical``) and
measured with the same metrics as ``m2t eval``: bpp from the real file bytes,
PSNR-RGB and MS-SSIM of the decoded 8-bit image, encode and decode seconds.

Writes, for ``--output out/classical.json``:
* ``out/classical.<codec>.json``: one CompressAI results file per codec (one
  point per quality, sorted by bpp), readable by CompressAI's plotting tools
  and by ``experiments/rd_table.py``;
* ``out/classical.json``: the same documents as one JSON list;
* ``out/classical.per_image.json``: every image at every setting.

AVIF runs when the installed Pillow can write it (``PIL.features``); a codec
that is asked for but missing is an error. ``--max-side`` downsizes larger
images first (Lanczos), for quick runs; the results note it.
"""

import argparse
import os
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from m2t_jax.evaluation import classical, rd  # noqa: E402


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


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--images", required=True, help="folder of PNG/JPEG images")
  parser.add_argument("--output", required=True, help="path of the combined JSON")
  parser.add_argument("--codecs", nargs="+", default=None, choices=classical.CODECS,
                      help="default: every codec the installed Pillow can write")
  parser.add_argument("--qualities", nargs="+", type=int, default=None,
                      help="one sweep for all codecs (default: per-codec sweeps)")
  parser.add_argument("--max-images", type=int, default=0, help="only the first N images")
  parser.add_argument("--max-side", type=int, default=0,
                      help="downsize images whose longer side exceeds this (0: never)")
  parser.add_argument("--no-progress", action="store_true")
  args = parser.parse_args(argv)

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

  stem = args.output[:-5] if args.output.endswith(".json") else args.output
  for codec, doc in docs.items():
    doc["meta"].update({"dataset": f"folder:{args.images}", "num_inputs": len(items),
                        "max_side": args.max_side or None})
    rd.write_json(f"{stem}.{codec}.json", doc)
  rd.write_json(args.output, list(docs.values()))
  rd.write_json(rd.per_image_path(args.output),
                      {"dataset": f"folder:{args.images}", "images": records})
  for codec, doc in docs.items():
    r = doc["results"]
    print(f"{codec}: " + ", ".join(f"q{q} {b:.3f} bpp {p:.2f} dB" for q, b, p in
                                   zip(r["quality"], r["bpp"], r["psnr-rgb"], strict=True)))
  print(f"wrote {args.output}, {stem}.<codec>.json and {rd.per_image_path(args.output)}")
  failed = [r for r in records if "error" in r]
  if failed:
    print(f"classical: warning: {len(failed)} evaluations failed (see the per-image file)",
          file=sys.stderr)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
