"""ParallelConfig is checked against the model and the world size before any work."""

import pytest

from echovideo.errors import EchoVideoInputError
from parallel import ParallelConfig


@pytest.mark.parametrize("config, world, field, text", [
    (ParallelConfig(ulysses=5), 5, "--ulysses", "does not divide the model's 48"),
    (ParallelConfig(ulysses=2, ring=2), 8, "--ulysses/--ring/--cfg-parallel", "= 4 ranks, but the process group has 8"),
    (ParallelConfig(cfg=3), 3, "--cfg-parallel", "must be 1 or 2"),
    (ParallelConfig(ring=0), 0, "--ring", "positive"),
])
def test_bad_layouts_are_clear_errors(config, world, field, text):
    with pytest.raises(EchoVideoInputError, match=text) as err:
        config.validate(num_heads=48, world_size=world)
    assert err.value.field == field


def test_good_layout_and_its_sizes():
    config = ParallelConfig(ulysses=2, ring=2, cfg=2).validate(num_heads=48, world_size=8)
    assert (config.sequence, config.world) == (4, 8)
