"""lifecycle.MemoryGrowth: refork_on_memory's rule over a generation's memory samples."""
import pytest

from gunicorn_smartspawn.master.lifecycle import SAMPLES_IN_A_ROW, MemoryGrowth

MIB = 1024 * 1024


def sample(rule, uss_mib, shared_mib=100, fraction=0.1):
    """One sample of workers with these USS (MiB), each sharing `shared_mib`."""
    uss = [u * MIB for u in uss_mib]
    rss = [u + shared_mib * MIB for u in uss]
    return rule.observe(uss, rss, fraction)


def test_the_first_sample_is_the_baseline_with_what_the_workers_share():
    rule = MemoryGrowth(generation=1)
    assert rule.baseline_uss is None
    assert sample(rule, [10, 30], shared_mib=100) is False
    assert rule.baseline_uss == 20 * MIB and rule.shared == 100 * MIB
    assert rule.growth == 0 and rule.in_a_row == 0 and rule.generation == 1


def test_growth_above_the_fraction_fires_after_samples_in_a_row():
    rule = MemoryGrowth(generation=1)
    sample(rule, [20, 20])  # baseline 20 MiB, 100 MiB shared: fires above +10 MiB
    fired = [sample(rule, [31, 31]) for _ in range(SAMPLES_IN_A_ROW)]
    assert fired == [False] * (SAMPLES_IN_A_ROW - 1) + [True]
    assert rule.growth == 11 * MIB
    assert sample(rule, [31, 31]) is True  # still above: still fires


def test_growth_of_exactly_the_fraction_does_not_count():
    rule = MemoryGrowth(generation=1)
    sample(rule, [20, 20])
    assert [sample(rule, [30, 30]) for _ in range(SAMPLES_IN_A_ROW + 2)] == \
        [False] * (SAMPLES_IN_A_ROW + 2)
    assert rule.in_a_row == 0


def test_a_sample_below_the_threshold_breaks_the_row():
    rule = MemoryGrowth(generation=1)
    sample(rule, [20, 20])
    for _ in range(SAMPLES_IN_A_ROW - 1):
        assert sample(rule, [40, 40]) is False
    assert sample(rule, [25, 25]) is False and rule.in_a_row == 0
    fired = [sample(rule, [40, 40]) for _ in range(SAMPLES_IN_A_ROW)]
    assert fired == [False] * (SAMPLES_IN_A_ROW - 1) + [True]


def test_the_mean_counts_not_one_worker():
    rule = MemoryGrowth(generation=1)
    sample(rule, [20, 20, 20, 20])
    # One worker grew by 30 MiB: the mean by 7.5 MiB, under 10% of 100 MiB.
    assert not any(sample(rule, [50, 20, 20, 20]) for _ in range(SAMPLES_IN_A_ROW + 1))
    assert rule.growth == 7.5 * MIB


def test_a_lower_mean_is_the_new_baseline_and_resets_the_row():
    rule = MemoryGrowth(generation=1)
    sample(rule, [30, 30], shared_mib=100)
    for _ in range(SAMPLES_IN_A_ROW - 1):
        sample(rule, [50, 50])
    assert rule.in_a_row == SAMPLES_IN_A_ROW - 1
    assert sample(rule, [10, 10], shared_mib=200) is False
    assert rule.baseline_uss == 10 * MIB and rule.shared == 200 * MIB
    assert rule.in_a_row == 0 and rule.growth == 0
    # Now measured against 10 MiB and 200 MiB shared: +20 MiB is needed.
    assert not any(sample(rule, [30, 30]) for _ in range(SAMPLES_IN_A_ROW + 1))
    fired = [sample(rule, [31, 31]) for _ in range(SAMPLES_IN_A_ROW)]
    assert fired[-1] is True


def test_a_higher_mean_keeps_the_first_baseline_and_what_was_shared_then():
    rule = MemoryGrowth(generation=1)
    sample(rule, [20, 20], shared_mib=100)
    sample(rule, [25, 25], shared_mib=10)  # sharing less now: the baseline's share counts
    assert rule.baseline_uss == 20 * MIB and rule.shared == 100 * MIB


@pytest.mark.parametrize("fraction, fires_at_mib", [(0.5, 71), (0.01, 22)])
def test_the_fraction_sets_the_threshold(fraction, fires_at_mib):
    rule = MemoryGrowth(generation=1)
    sample(rule, [20, 20], fraction=fraction)
    below = [sample(rule, [fires_at_mib - 1.5] * 2, fraction=fraction)
             for _ in range(SAMPLES_IN_A_ROW + 1)]
    above = [sample(rule, [fires_at_mib] * 2, fraction=fraction)
             for _ in range(SAMPLES_IN_A_ROW)]
    assert not any(below) and above[-1] is True
