"""experiments/size_schedules.py: the schedule search of a nested model with
depth exits and MLP widths, on a random tiny model (the numbers are
meaningless; what is checked is what the search computes)."""

import json
import math

import jax
import numpy as np
import skimage.data
from PIL import Image

from experiments import size_schedules
from m2t_jax import configs, model as model_lib, saved_model
from m2t_jax.entropy import nested


def test_admissible_schedules_keep_exits_from_growing():
  schedules = size_schedules.admissible(4, 3, 2)
  assert len(schedules) == math.comb(4 + 3 - 1, 4) * 2**4
  assert len(set(schedules)) == len(schedules)
  for schedule in schedules:
    exits = [nested.split_code(c)[0] for c in schedule]
    assert exits == sorted(exits, reverse=True)
  assert (nested.code(2, 1),) * 4 in schedules
  assert (nested.code(0), nested.code(1), nested.code(1), nested.code(1)) not in schedules


def test_search_rates_and_times_width_schedules(tmp_path):
  config = configs.get_config("nested", "tiny")
  config.nested.exit_layers = (1, 3)  # two exits, two widths: a quick search
  config.nested.exit_weights = (1.0, 1.0)
  config.nested.mlp_widths = (1.0, 0.5)
  saved_model.save_params(str(tmp_path / "model"), config,
                          jax.device_get(model_lib.init_params(config, seed=5)))
  images = tmp_path / "images"
  images.mkdir()
  Image.fromarray(skimage.data.coffee()[:64, :96]).save(images / "coffee.png")
  size_schedules.main(["--model", str(tmp_path / "model"), "--images", str(images),
                       "--repeats", "1", "--measure", "full",
                       "--output-dir", str(tmp_path / "out")])
  out = json.load(open(tmp_path / "out" / "size_schedules.json"))
  assert out["num_admissible"] == math.comb(4 + 2 - 1, 4) * 2**4
  assert out["hidden_sizes"] == [64, 32]
  rows = {r["schedule"]: r for r in out["schedules"]}
  full = rows[out["named"]["full"]]
  assert full["schedule"] == "1:0,1:0,1:0,1:0" and full["time_vs_full"] == 1.0
  assert full["real_bpp"] > 0  # decoded for real
  for row in rows.values():
    widths = {int(part.split(":")[1]) for part in row["schedule"].split(",")}
    if len(widths) == 1:  # one width everywhere: the estimate is that pass, exact
      assert np.isclose(row["bpp_est"], row["bpp_exact"], rtol=1e-5), row
  # The front is ordered: faster schedules pay more bits.
  front = [rows[s] for s in out["pareto"]]
  pairs = zip(front, front[1:], strict=False)
  assert front and all(a["predicted_transformer_s"] <= b["predicted_transformer_s"]
                       and a["bpp_est"] > b["bpp_est"] for a, b in pairs)
  # Narrow steps cost fewer FLOPs than the same steps at full width.
  costs = {(c["step"], c["exit"], c["width"]): c["gflops"] for c in out["step_costs"]}
  assert all(costs[(i, 1, 1)] < costs[(i, 1, 0)] for i in range(4))
