"""Trio's side of W1..W4 (nurseries; W4 memory channels).

usage: /usr/bin/python3 bench/w_trio.py W1|W2|W3|W4 [n] [rounds]
Prints RESULT lines; exits non-zero (AssertionError) if the work was not all done.
"""
import gc
import statistics
import sys
import time

import trio

args = sys.argv[1:]
which = args[0] if args else None
n = int(args[1]) if len(args) > 1 else None
rounds = int(args[2]) if len(args) > 2 else None


def result(w, key, v):
    print(f"RESULT {w} trio {key}={v:.3f}", flush=True)


async def w1(n):
    """Spawn n no-op tasks, then await all n (the nursery's exit). ns per task."""
    done = 0

    async def noop():
        nonlocal done
        done += 1

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(noop)
    dt = time.perf_counter() - t0
    assert done == n, f"W1 trio: only {done} of {n} tasks ran"
    return dt * 1e9 / n


async def w2(n):
    """n tasks each sleeping 50 ms concurrently. Wall ms."""
    done = 0

    async def sleeper():
        nonlocal done
        await trio.sleep(0.05)
        done += 1

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(sleeper)
    ms = (time.perf_counter() - t0) * 1e3
    assert done == n, f"W2 trio: only {done} of {n} tasks woke"
    assert ms >= 49, f"W2 trio: 50 ms sleeps finished after {ms} ms"
    return ms


class Boom(Exception):
    pass


async def w3(n):
    """n siblings sleeping 10 s with a finally, one raising after 10 ms.
    ms from the raise until the nursery has raised."""
    closed = 0
    t_raise = None

    async def sibling():
        nonlocal closed
        try:
            await trio.sleep(10)
            raise AssertionError("W3 trio: a sibling slept its full 10 s")
        finally:
            closed += 1

    async def raiser():
        nonlocal t_raise
        await trio.sleep(0.01)
        t_raise = time.perf_counter()
        raise Boom()

    t0 = time.perf_counter()
    raised = False
    try:
        async with trio.open_nursery() as nursery:
            for _ in range(n):
                nursery.start_soon(sibling)
            nursery.start_soon(raiser)
    except* Boom:  # also matches a bare Boom (trio < 0.25 unwraps single errors)
        raised = True
    t1 = time.perf_counter()
    assert raised, "W3 trio: the nursery did not raise"
    assert closed == n, f"W3 trio: only {closed} of {n} cleanups ran"
    assert t1 - t0 < 5, "W3 trio: the nursery waited for the sleepers"
    return (t1 - t_raise) * 1e3


async def w4(n):
    """Two tasks ping-pong over two trio.open_memory_channel(1); n messages
    (n/2 round trips). ns per message."""
    trips = n // 2
    ping_tx, ping_rx = trio.open_memory_channel(1)
    pong_tx, pong_rx = trio.open_memory_channel(1)
    got = echoed = 0

    async def pinger():
        nonlocal got
        for i in range(1, trips + 1):
            await ping_tx.send(i)
            v = await pong_rx.receive()
            if v != i:
                raise AssertionError(f"W4 trio: round trip {i} came back as {v}")
            got += 1

    async def ponger():
        nonlocal echoed
        total = 0
        for _ in range(trips):
            v = await ping_rx.receive()
            total += v
            await pong_tx.send(v)
        echoed = total

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pinger)
        nursery.start_soon(ponger)
    dt = time.perf_counter() - t0
    assert got == trips and echoed == trips * (trips + 1) // 2, \
        f"W4 trio: not every message was delivered ({got} of {trips} round trips)"
    return dt * 1e9 / (2 * trips)


def bench(fn, n, rounds):
    """Round 0 runs first in this fresh process (cold), then `rounds` warm
    rounds; returns (cold, median of the warm ones or None)."""
    samples = []
    for _ in range(rounds + 1):
        gc.collect()
        samples.append(trio.run(fn, n))
    return samples[0], (statistics.median(samples[1:]) if rounds else None)


def report(w, key, cold_warm):
    cold, warm = cold_warm
    if warm is not None:
        result(w, key, warm)
    result(w, "cold_" + key, cold)


if which == "W1":
    report("W1", "ns_per_task", bench(w1, n or 100000, 3 if rounds is None else rounds))
elif which == "W2":
    report("W2", "wall_ms", bench(w2, n or 20000, 3 if rounds is None else rounds))
elif which == "W3":
    report("W3", "ms_raise_to_raised", bench(w3, n or 10000, 3 if rounds is None else rounds))
elif which == "W4":
    report("W4", "ns_per_msg", bench(w4, n or 1000000, 3 if rounds is None else rounds))
else:
    sys.exit("usage: w_trio.py W1|W2|W3|W4 [n] [rounds]")
