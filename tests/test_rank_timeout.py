"""QUANTBENCH_RANK_TIMEOUT: how long a rank waits for the others in a gather before it gives up."""

import pytest

from quantbench.core import distributed
from quantbench.core.distributed import MIN_TIMEOUT_SECONDS, RankLost


@pytest.mark.parametrize("value", ["nan", "inf", "-5", "0", "ten", "1e30"])
def test_a_wait_that_is_not_a_positive_number_of_seconds_is_one_line(value, monkeypatch):
    monkeypatch.setenv("QUANTBENCH_RANK_TIMEOUT", value)
    with pytest.raises(RankLost, match="QUANTBENCH_RANK_TIMEOUT=.*give seconds above 0") as error:
        distributed._timeout(1.0)
    assert "\n" not in str(error.value)


def test_the_wait_is_the_users_or_three_times_the_ranks_own_work(monkeypatch):
    monkeypatch.setenv("QUANTBENCH_RANK_TIMEOUT", "2.5")
    assert distributed._timeout(1000.0) == 2.5
    monkeypatch.delenv("QUANTBENCH_RANK_TIMEOUT")
    assert distributed._timeout(1.0) == MIN_TIMEOUT_SECONDS and distributed._timeout(1000.0) == 3000.0
