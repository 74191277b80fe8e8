"""`m2t eval`: real byte counts, CompressAI schema, failing images reported."""

import contextlib
import hashlib
import io
import json

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from m2t_jax import Codec, get_config, models
from m2t_jax.app import cli
from m2t_jax.evaluation import rd
from m2t_jax.refine import RefineSettings

SIZE = (64, 96)


@pytest.fixture(scope="module")
def photos():
  return {"astronaut.png": skdata.astronaut()[:SIZE[0], :SIZE[1]],
          "coffee.png": skdata.coffee()[:SIZE[0], :SIZE[1]]}


@pytest.fixture(scope="module")
def eval_run(tmp_path_factory, photos):
  """One `m2t eval` run over two photos and a corrupt PNG (random tiny model)."""
  folder = tmp_path_factory.mktemp("images")
  for name, image in photos.items():
    Image.fromarray(image).save(folder / name)
  (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
  output = tmp_path_factory.mktemp("out") / "results.json"
  stdout, stderr = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
    status = cli.main(["eval", "--images", str(folder), "--config", "m2t:tiny",
                       "--output", str(output)])
  with open(output) as f:
    results = json.load(f)
  with open(rd.per_image_path(str(output))) as f:
    per_image = json.load(f)
  return {"status": status, "results": results, "per_image": per_image,
          "stderr": stderr.getvalue(), "stdout": stdout.getvalue()}


def test_results_schema(eval_run):
  assert eval_run["status"] == 0, eval_run["stderr"]
  doc = eval_run["results"]
  assert {"name", "description", "meta", "results"} <= set(doc)
  for key in ("bpp", "psnr-rgb", "ms-ssim-rgb", "encoding_time", "decoding_time",
              "estimated_bpp"):
    assert len(doc["results"][key]) == 1 and isinstance(doc["results"][key][0], float), key
  assert doc["results"]["num_images"] == [2] and doc["results"]["num_failed"] == [1]
  assert doc["results"]["refine_steps"] == [cli.DEFAULT_REFINE_STEPS]
  assert doc["results"]["refine_lmbda"] == [get_config("m2t", "tiny").lmbda]
  assert doc["meta"]["split"] == "all" and doc["meta"]["num_inputs"] == 3


def test_split_evaluates_only_that_split_and_records_it(tmp_path, photos, capsys):
  # Names picked by the documented rule (sha256 of the name mod 1000 < 170: val),
  # computed here without the module.
  def is_val(name):
    return int(hashlib.sha256(name.encode()).hexdigest(), 16) % 1000 < 170
  names = [f"{i:04d}.png" for i in range(100)]
  val = [n for n in names if is_val(n)][:2]
  other = [n for n in names if not is_val(n)][:2]
  (tmp_path / "sub").mkdir()
  for i, name in enumerate(val + other):
    folder = tmp_path / "sub" if i % 2 else tmp_path  # the folder does not matter
    Image.fromarray(photos["coffee.png"]).save(folder / name)
  output = tmp_path / "r.json"
  status = cli.main(["eval", "--images", str(tmp_path), "--split", "val", "--config",
                     "m2t:tiny", "--refine-steps", "0", "--no-progress", "--output",
                     str(output)])
  assert status == 0, capsys.readouterr().err
  with open(output) as f:
    doc = json.load(f)
  assert doc["meta"]["split"] == "val" and doc["meta"]["num_inputs"] == 2
  assert doc["results"]["num_images"] == [2]
  with open(rd.per_image_path(str(output))) as f:
    evaluated = sorted(r["image"].split("/")[-1] for r in json.load(f)["images"])
  assert evaluated == sorted(val)
  assert cli.main(["eval", "--tfds", "kodak:test", "--split", "test", "--output",
                   str(tmp_path / "x.json")]) == 1
  assert "--split selects files of an --images folder" in capsys.readouterr().err


def test_bpp_is_the_real_byte_count(eval_run, photos):
  # Independently: the same random model, compress, count the bytes.
  codec = Codec.from_config(get_config("m2t", "tiny"), seed=0)
  pixels = SIZE[0] * SIZE[1]
  # m2t eval refines each latent by default, as m2t compress does.
  default = RefineSettings(cli.DEFAULT_REFINE_STEPS, cli.DEFAULT_REFINE_LR)
  expected = {name: 8 * len(codec.compress(image, refine=default)) / pixels
              for name, image in photos.items()}
  records = {r["image"]: r for r in eval_run["per_image"]["images"] if "error" not in r}
  assert set(records) == set(expected)
  for name, record in records.items():
    assert record["bpp"] == expected[name]
    assert record["bytes"] * 8 / pixels == expected[name]
    assert record["decoded_equals_estimate"] is True
    assert 0 < record["ms-ssim-rgb"] <= 1 and record["ms_ssim_scales"] == 3
  mean = np.mean(list(expected.values()))
  assert eval_run["results"]["results"]["bpp"][0] == pytest.approx(mean, rel=1e-12)


def test_failing_image_is_reported_and_run_goes_on(eval_run):
  failed = [r for r in eval_run["per_image"]["images"] if "error" in r]
  assert [r["image"] for r in failed] == ["broken.png"]
  assert "cannot read" in failed[0]["error"]
  assert "broken.png" in eval_run["stderr"] and "warning" in eval_run["stderr"]
  assert "Traceback" not in eval_run["stderr"]


def test_without_a_checkpoint_every_shipped_model_of_the_default_kind(tmp_path):
  Image.fromarray(skdata.coffee()[:40, :56]).save(tmp_path / "a.png")
  status = cli.main(["eval", "--images", str(tmp_path), "--output", str(tmp_path / "r.json"),
                     "--no-progress", "--refine-steps", "0"])
  assert status == 0
  with open(tmp_path / "r.json") as f:
    results = json.load(f)
  default_kind = models.manifest()["models"][models.manifest()["default"]]["kind"]
  assert results["results"]["model"] == [default_kind] * len(models.names(default_kind))
  assert len(models.names(default_kind)) >= 1


def test_missing_folder_and_checkpoint_errors(tmp_path, capsys):
  status = cli.main(["eval", "--images", str(tmp_path / "nope"), "--config", "m2t:tiny",
                     "--output", str(tmp_path / "r.json")])
  assert status == 1 and "does not exist" in capsys.readouterr().err
  status = cli.main(["eval", "--images", str(tmp_path), "--checkpoint", str(tmp_path / "ck"),
                     "--output", str(tmp_path / "r.json")])
  assert status == 1 and "not a folder written by Codec.save" in capsys.readouterr().err


def test_tfds_spec():
  assert rd.parse_tfds_spec("kodak:test") == ("kodak", "test")
  assert rd.parse_tfds_spec("clic/pro:1.0.0:validation") == ("clic/pro:1.0.0",
                                                                    "validation")
  with pytest.raises(ValueError, match="NAME:SPLIT"):
    rd.parse_tfds_spec("kodak")


def test_compressai_results_sorted_by_bpp():
  points = [{"bpp": 0.5, "psnr-rgb": 32.0}, {"bpp": 0.2, "psnr-rgb": 29.0}]
  doc = rd.compressai_results("x", "y", points, keys=("bpp", "psnr-rgb"))
  assert doc["results"] == {"bpp": [0.2, 0.5], "psnr-rgb": [29.0, 32.0]}
