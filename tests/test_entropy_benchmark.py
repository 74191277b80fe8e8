"""experiments/entropy_benchmark.py: parsing of --entropy-models, and the measure of when
the ranking stops changing (the benchmark's answer to "how many steps are
enough"). Expected values below are worked out by hand from the rows."""

import argparse

import pytest

from experiments import entropy_benchmark as bench


def row(model, step, per_photo, kind=None, S=8, variant=None):
  return {"model": model, "kind": kind or model.split(":")[0], "S": S,
          "variant": variant, "step": step, "bpp_per_photo": per_photo,
          "bpp": sum(per_photo) / len(per_photo), "bpp_min": min(per_photo),
          "bpp_max": max(per_photo), "entropy_params": 1}


# Means: step 100: a 0.30, b 0.20, c 0.25 (b < c < a); step 200: a 0.20, b 0.22,
# c 0.25 and step 300: a 0.19, b 0.21, c 0.24 (both a < b < c). "late" exists at
# step 300 only, so it takes no part in the order over steps.
ROWS = [row("a", 100, [0.30, 0.30]), row("b", 100, [0.20, 0.20]),
        row("c", 100, [0.25, 0.25]),
        row("a", 200, [0.20, 0.20]), row("b", 200, [0.22, 0.22]),
        row("c", 200, [0.25, 0.25]),
        row("a", 300, [0.18, 0.20]), row("b", 300, [0.17, 0.25]),
        row("c", 300, [0.20, 0.28]), row("late", 300, [0.5, 0.5])]


def test_parse_model_reads_S_and_config_fields():
  assert bench.parse_model("m2t:S=4:transformer.num_layers=2") == (
      "m2t", {"schedule.num_steps": "4", "transformer.num_layers": "2"})
  assert bench.parse_model("mt") == ("mt", {})
  with pytest.raises(SystemExit, match="key=value"):
    bench.parse_model("m2t:S")


def test_ranking_stability_compares_each_step_with_the_last():
  result = bench.ranking_stability(ROWS, [100, 200, 300])
  assert result["entries"] == ["a", "b", "c"]
  by_step = {e["step"]: e for e in result["per_step"]}
  # step 100 against the last order a < b < c: a/b and a/c flipped, b/c kept:
  # 1 concordant and 2 discordant pairs of 3, tau = (1 - 2) / 3.
  assert by_step[100]["flipped"] == ["a / b", "a / c"]
  assert by_step[100]["tau"] == pytest.approx(-1 / 3)
  assert by_step[200]["flipped"] == [] and by_step[200]["tau"] == pytest.approx(1.0)
  assert result["settled_at"] == 200


def test_an_order_that_changes_at_the_last_step_settles_only_there():
  result = bench.ranking_stability(ROWS, [200, 100])  # b < c < a at the last step
  assert result["settled_at"] == 200
  assert result["per_step"][0]["flipped"] == ["a / b", "a / c"]
  assert bench.ranking_stability(ROWS, [300]) == {}


def test_photo_wins_counts_the_photos_each_adjacent_pair_splits():
  # step 300 order: a 0.19 < b 0.21 < c 0.24 < late 0.5; per photo a beats b
  # on the second photo only, b beats c on both, c beats late on both.
  assert bench.photo_wins(ROWS, 300) == [
      "a < b: 1/2 photos", "b < c: 2/2 photos", "c < late: 2/2 photos"]


def test_markdown_reports_where_the_order_settles():
  args = argparse.Namespace(eval_steps=[100, 200, 300], train_steps=300, batch_size=8,
                            model="src")
  text = bench.markdown(ROWS, [("p1.png", None), ("p2.png", None)], args)
  assert "- step 100: tau -0.33; flipped: a / b, a / c" in text
  assert "The order is the last step's from step 200 on." in text
  assert "- a < b: 1/2 photos" in text
