"""The quality <-> rate code <-> rate level conversion (coding/rate_code.py)."""

import numpy as np
import pytest

from m2t_jax.coding import bitstream
from m2t_jax.coding import rate_code as rc


def test_the_ends_and_the_middle():
  # 65534 codes: quality 0 and 100 are the ends, 50 the middle (65534 / 2).
  assert bitstream.RATE_CODE_MAX == 65534
  assert [rc.code_of_quality(q) for q in (0, 50, 100, 100.0)] == [0, 32767, 65534, 65534]
  assert rc.code_of_quality(rc.DEFAULT_QUALITY) == 32767
  assert rc.level_of_code(0) == 0.0 and rc.level_of_code(65534) == 1.0
  assert rc.level_of_code(32767) == np.float32(0.5)


def test_quality_survives_the_code_to_a_code_step():
  for q in np.linspace(0, 100, 41):
    code = rc.code_of_quality(float(q))
    assert abs(rc.quality_of_code(code) - q) <= 0.5 * 100 / 65534 + 1e-12
    assert rc.code_of_quality(rc.quality_of_code(code)) == code


def test_level_is_float32_and_repeated_on_request():
  level = rc.level_of_code(12345)
  assert level.dtype == np.float32 and level == np.float32(12345) / np.float32(65534)
  batch = rc.level_of_code(12345, 3)
  assert batch.shape == (3,) and batch.dtype == np.float32 and np.all(batch == level)
  assert rc.level_of_code(None) is None and rc.level_of_code(None, 3) is None
  assert rc.quality_of_code(None) is None


@pytest.mark.parametrize("bad", [-0.01, 100.5, float("nan"), float("inf"), True, "50", None])
def test_bad_qualities_are_refused(bad):
  with pytest.raises(ValueError, match="quality must be a number from 0"):
    rc.code_of_quality(bad)
