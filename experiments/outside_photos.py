"""Photos from outside our collection, for a second check nobody tuned to.

    python -m experiments.outside_photos --output-dir /tmp/outside

Writes scikit-image's natural colour photos (shipped inside its wheel, so no
download) as 8-bit RGB PNGs into ``--output-dir``, for ``m2t eval --images`` and
``python -m experiments.classical --images``. Why: our validation split is six photos
of the same Wikimedia collection as the training photos, and the shipped models
are also judged on photos held back from us. These five come from other
cameras and other hands (NASA, scikit-image's authors, public-domain stock),
were never trained or tuned on (the demo only codes three of them), and so show
whether a margin over WebP holds off our collection. Some were JPEG-compressed
at their source (rocket.jpg); every codec codes the same decoded pixels.

Only natural photos: skimage's greyscale textures, microscopy, retina and
astronomy images are left out, and motorcycle_right (the stereo pair's second
view, nearly the left one).
"""

import os
import sys

from PIL import Image

from experiments import common

# name -> skimage.data loader of the photo (uint8, H x W x 3)
PHOTOS = {
    "astronaut": lambda data: data.astronaut(),
    "chelsea": lambda data: data.chelsea(),
    "coffee": lambda data: data.coffee(),
    "rocket": lambda data: data.rocket(),
    "motorcycle_left": lambda data: data.stereo_motorcycle()[0],
}


def build_parser():
  p = common.parser("outside_photos", __doc__)
  common.add(p, "--output-dir", default=os.path.join("out", "outside_photos"),
             detail="NAME.png for each photo")
  return p


def main(argv=None) -> int:
  args = common.parse(build_parser(), argv)
  from skimage import data  # noqa: PLC0415

  os.makedirs(args.output_dir, exist_ok=True)
  for name, load in PHOTOS.items():
    image = load(data)
    if image.ndim != 3 or image.shape[2] != 3:
      raise ValueError(f"skimage's {name} is not an RGB photo: shape {image.shape}.")
    path = os.path.join(args.output_dir, f"{name}.png")
    Image.fromarray(image).save(path)
    print(f"{path}: {image.shape[1]}x{image.shape[0]}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
