"""The Redis circuit breaker, on a clock moved by hand and probes that are told what
to answer: no Redis, no sleeps."""

import pytest
import redis

from voiceflow.breaker import CircuitBreaker, RedisDown


class Probe:
    """Stands for PING: answers or not, as the test says; counts the calls."""

    def __init__(self):
        self.answers = False
        self.calls = 0

    def sync(self):
        self.calls += 1
        if not self.answers:
            raise redis.exceptions.ConnectionError("refused")

    async def __call__(self):
        self.sync()


@pytest.fixture
def probe():
    return Probe()


@pytest.fixture
def clock(hand_clock):
    return hand_clock


@pytest.fixture
def breaker(probe, clock):
    return CircuitBreaker(probe=probe, probe_sync=probe.sync, clock=clock, interval=1)


def test_closed_it_allows_everything_and_asks_nothing(breaker, probe):
    assert not breaker.down
    assert all(breaker.allows() for _ in range(3))
    breaker.check()
    assert probe.calls == 0 and breaker.outages == 0


def test_after_a_failure_nothing_waits_until_the_retry_interval(breaker, probe, clock):
    breaker.failed(redis.exceptions.ConnectionError("refused"))
    assert breaker.down and breaker.outages == 1
    clock.now += 0.999
    assert not breaker.allows()
    with pytest.raises(RedisDown):
        breaker.check()
    assert probe.calls == 0


def test_in_a_thread_the_caller_that_is_due_probes_and_uses_the_answer(
    breaker, probe, clock
):
    breaker.failed()
    clock.now += 1
    assert not breaker.allows()  # probed: no answer
    assert probe.calls == 1 and breaker.down
    assert not breaker.allows()  # the next probe is an interval later
    assert probe.calls == 1
    probe.answers = True
    clock.now += 1
    assert breaker.allows()  # probed, answered: this caller uses Redis
    assert not breaker.down and probe.calls == 2
    assert breaker.allows() and probe.calls == 2


async def test_on_a_loop_one_probe_runs_in_the_background(breaker, probe, clock):
    breaker.failed()
    clock.now += 1
    assert not breaker.allows()  # the caller does not wait: its fallback now
    probing = breaker.probing
    assert probing is not None
    clock.now += 5
    assert not breaker.allows() and breaker.probing is probing  # one at a time
    await probing
    assert breaker.down and probe.calls == 1  # no answer: the next one in 1 s
    assert not breaker.allows() and breaker.probing is probing
    probe.answers = True
    clock.now += 1
    assert not breaker.allows()
    await breaker.probing
    assert not breaker.down and breaker.allows()
    assert probe.calls == 2 and breaker.outages == 1


def test_outages_count_openings_not_failures(breaker, probe, clock):
    for _ in range(3):
        breaker.failed()
    assert breaker.outages == 1
    probe.answers = True
    clock.now += 1
    assert breaker.allows()
    breaker.failed()
    assert breaker.down and breaker.outages == 2
    breaker.reset()
    assert not breaker.down and breaker.outages == 0


def test_a_failure_while_open_puts_the_next_probe_off(breaker, probe, clock):
    breaker.failed()
    clock.now += 0.9
    breaker.failed()  # e.g. a command that was in flight
    clock.now += 0.5
    assert not breaker.allows() and probe.calls == 0
    clock.now += 0.5
    assert not breaker.allows() and probe.calls == 1
