"""``m2t demo``: the shipped models on a few sample photos, beside AVIF, WebP and JPEG.

For each sample photo (scikit-image's astronaut, coffee and chelsea, which ship
with a dependency, so a fresh machine has them) and each kind of shipped model
(``models.kinds()``: the default model's kind first, e.g. M2T, then MT), with
that kind's shipped model (the default one for its kind): compress to a real
``.m2t`` file, decompress, and measure bpp (file bytes), PSNR-RGB, encode and
decode seconds. The classical codecs (``CLASSICAL``: AVIF, the strongest, then
WebP and JPEG, with ``evaluation.classical``'s settings) are each encoded at the
quality whose bpp is closest to the first model's, so every codec is seen at
the same size. A codec this Pillow cannot write (AVIF needs Pillow >= 11.3 built
with libavif) is left out with a note saying so, never an error. Writes into the
output folder: ``NAME_KIND.m2t``, ``NAME_KIND.png`` (the decoded image),
``NAME_side_by_side.png`` (original | first model | each classical codec at the
matched size, each panel under a strip with its label: codec, bpp, PSNR;
``side_by_side``) and ``results.json``; prints a table.
Times exclude JAX compilation: each model compiles on a first, untimed image.
"""

import json
import os
import sys
import time

import numpy as np
from PIL import Image

from m2t_jax import models
from m2t_jax.evaluation import classical, metrics

SAMPLES = ("astronaut", "coffee", "chelsea")
CLASSICAL = ("avif", "webp", "jpeg")  # shown beside the model, strongest first


def classical_codecs(available=None) -> tuple[list[str], list[str]]:
  """(the codecs of ``CLASSICAL`` to show, in order; a note for each left out).

  available: the codecs this Pillow writes (default ``classical.available_codecs()``).
  """
  available = classical.available_codecs() if available is None else available
  shown = [c for c in CLASSICAL if c in available]
  notes = [f"{c.upper()}: not shown, this Pillow ({Image.__version__}) cannot write it"
           + (" (AVIF needs Pillow >= 11.3 built with libavif)" if c == "avif" else "")
           for c in CLASSICAL if c not in available]
  return shown, notes


def sample_images(names=SAMPLES, max_side: int | None = None) -> list[tuple[str, np.ndarray]]:
  """The named scikit-image photos, uint8 (H, W, 3), optionally cropped."""
  from skimage import data
  out = []
  for name in names:
    image = getattr(data, name)()
    if max_side:
      image = np.ascontiguousarray(image[:max_side, :max_side])
    out.append((name, image))
  return out


def matched_quality(image: np.ndarray, codec: str, target_bpp: float):
  """(quality, bytes, decoded) of ``codec`` with bpp closest to ``target_bpp``."""
  pixels = image.shape[0] * image.shape[1]
  lo, hi, best = 1, 95, None
  while lo <= hi:  # bpp grows with quality: bisect, keep the closest seen
    q = (lo + hi) // 2
    data, decoded = classical.encode_decode(image, codec, q)
    bpp = 8 * len(data) / pixels
    if best is None or abs(bpp - target_bpp) < abs(best[3] - target_bpp):
      best = (q, data, decoded, bpp)
    if bpp < target_bpp:
      lo = q + 1
    else:
      hi = q - 1
  return best[:3]


def label_parts(record: dict) -> list[str]:
  """The label of a result record: [codec, 'bpp', 'PSNR'] ('M2T', '0.190 bpp',
  '26.71 dB')."""
  return [record["codec"], f"{record['bpp']:.3f} bpp", f"{record['psnr']:.2f} dB"]


def _wrap(parts: list[str], font, width: float) -> list[str]:
  """``parts`` joined with ', ' into as few lines as fit ``width`` pixels (a part
  wider than that gets a line of its own, clipped when drawn)."""
  lines = [parts[0]]
  for part in parts[1:]:
    joined = f"{lines[-1]}, {part}"
    if font.getlength(joined) <= width:
      lines[-1] = joined
    else:
      lines.append(part)
  return lines


def side_by_side(panels: list[tuple[list[str], np.ndarray]]) -> tuple[np.ndarray, int]:
  """The panels left to right, each under a white strip with its label.

  Args:
    panels: (label parts, e.g. ``label_parts(record)``, uint8 (H, W_i, 3) image);
      every image of the same height H.

  Returns:
    (uint8 (strip + H, sum of W_i, 3), strip): the strip rows hold the labels
    (black on white, Pillow's built-in default font, wrapped at the parts to the
    panel's width); rows strip: are the images, unchanged (no label covers them).
  """
  from PIL import ImageDraw, ImageFont  # noqa: PLC0415
  font = ImageFont.load_default()  # built into Pillow: no font file to ship
  pad = 3
  line_height = font.getbbox("Ag")[3] + 2
  lines = [_wrap(parts, font, image.shape[1] - 2 * pad) for parts, image in panels]
  strip = 2 * pad + line_height * max(len(ls) for ls in lines)
  columns = []
  for (_, image), label in zip(panels, lines, strict=True):
    # One strip per panel, of its width: a label too long is clipped there and
    # never runs into the next panel's.
    header = Image.new("RGB", (image.shape[1], strip), "white")
    draw = ImageDraw.Draw(header)
    for i, line in enumerate(label):
      draw.text((pad, pad + i * line_height), line, fill="black", font=font)
    columns.append(np.concatenate([np.asarray(header), image], axis=0))
  return np.concatenate(columns, axis=1), strip


def _progress(message: str) -> None:
  print(f"[demo] {message}", file=sys.stderr, flush=True)


def run(output_dir: str, images=None, codecs=None, notes=None) -> list[dict]:
  """Runs the demo; returns one record per (image, codec).

  notes: a list that gets one line per classical codec left out (None: printed).
  """
  from m2t_jax.codec import Codec
  os.makedirs(output_dir, exist_ok=True)
  images = images if images is not None else sample_images()
  shown, left_out = classical_codecs()
  for note in left_out:
    if notes is None:
      _progress(note)
    else:
      notes.append(note)
  if codecs is None:
    models.resolve(None)  # raises FileNotFoundError when no model ships
    codecs = [(kind.upper(), Codec.load(kind)) for kind in models.kinds()]
  for label, codec in codecs:  # compile once, untimed, per model and image size
    for name, image in images:
      _progress(f"compiling {label} for {name} ({image.shape[1]}x{image.shape[0]})")
      codec.decompress(codec.compress(image))
  records = []
  for name, image in images:
    pixels = image.shape[0] * image.shape[1]
    first_record, first_decoded = None, None
    for label, codec in codecs:
      _progress(f"{label}: {name}")
      t0 = time.perf_counter()
      data = codec.compress(image)
      t1 = time.perf_counter()
      decoded = codec.decompress(data)
      t2 = time.perf_counter()
      with open(os.path.join(output_dir, f"{name}_{label.lower()}.m2t"), "wb") as f:
        f.write(data)
      Image.fromarray(decoded).save(os.path.join(output_dir, f"{name}_{label.lower()}.png"))
      records.append({"image": name, "codec": label, "bpp": 8 * len(data) / pixels,
                      "psnr": metrics.psnr_rgb(image, decoded), "encode_s": t1 - t0,
                      "decode_s": t2 - t1})
      if first_record is None:
        first_record, first_decoded = records[-1], decoded
    panels = [(["original"], image), (label_parts(first_record), first_decoded)]
    for codec_name in shown:
      _progress(f"{codec_name.upper()} at matched bpp: {name}")
      quality, data, decoded = matched_quality(image, codec_name, first_record["bpp"])
      records.append({"image": name, "codec": f"{codec_name.upper()} q{quality}",
                      "bpp": 8 * len(data) / pixels, "psnr": metrics.psnr_rgb(image, decoded),
                      "encode_s": None, "decode_s": None})
      panels.append((label_parts(records[-1]), decoded))
    side, _ = side_by_side(panels)
    Image.fromarray(side).save(os.path.join(output_dir, f"{name}_side_by_side.png"))
  with open(os.path.join(output_dir, "results.json"), "w") as f:
    json.dump(records, f, indent=1)
  return records


def format_table(records) -> str:
  lines = [f"{'image':<10} {'codec':<10} {'bpp':>7} {'PSNR dB':>8} {'enc s':>7} {'dec s':>7}"]
  for r in records:
    enc = f"{r['encode_s']:.2f}" if r["encode_s"] is not None else "-"
    dec = f"{r['decode_s']:.2f}" if r["decode_s"] is not None else "-"
    lines.append(f"{r['image']:<10} {r['codec']:<10} {r['bpp']:>7.3f} {r['psnr']:>8.2f} "
                 f"{enc:>7} {dec:>7}")
  return "\n".join(lines)


def comparison_lines(records) -> list[str]:
  """Per image: the first model against the classical codec of the highest PSNR
  at (about) its size, e.g. 'coffee: M2T 30.12 dB at 0.190 bpp; best classical
  at that size: AVIF q52, 30.40 dB at 0.192 bpp (M2T -0.28 dB)'."""
  lines = []
  for image in dict.fromkeys(r["image"] for r in records):
    rows = [r for r in records if r["image"] == image]
    model = rows[0]
    classical_rows = [r for r in rows if r["encode_s"] is None]
    if not classical_rows:
      continue
    best = max(classical_rows, key=lambda r: r["psnr"])
    lines.append(f"{image}: {model['codec']} {model['psnr']:.2f} dB at {model['bpp']:.3f} "
                 f"bpp; best classical at that size: {best['codec']}, {best['psnr']:.2f} dB "
                 f"at {best['bpp']:.3f} bpp ({model['codec']} "
                 f"{model['psnr'] - best['psnr']:+.2f} dB)")
  return lines


def main(output_dir: str) -> int:
  t0 = time.perf_counter()
  notes = []
  records = run(output_dir, notes=notes)
  print(format_table(records))
  print()
  for line in comparison_lines(records):
    print(line)
  for note in notes:
    print(note)
  print(f"\nwrote .m2t files, reconstructions and side-by-side PNGs to {output_dir} "
        f"({time.perf_counter() - t0:.0f} s)")
  return 0
