"""asyncio's side of W1..W6 (TaskGroup, Python >= 3.11); --uvloop runs it on uvloop.

usage: /usr/bin/python3 bench/w_asyncio.py [--uvloop] W1|W2|W3|W4|W5|W6 [n] [rounds]
(W5: n = round trips per client; W6: n = processes)
Prints RESULT lines; exits non-zero (AssertionError) if the work was not all done.
"""
import asyncio
import gc
import statistics
import sys
import time

args = sys.argv[1:]
impl = "asyncio"
if args and args[0] == "--uvloop":
    import uvloop
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    impl = "uvloop"
    args = args[1:]
which = args[0]
n = int(args[1]) if len(args) > 1 else None
rounds = int(args[2]) if len(args) > 2 else None


def result(w, key, v):
    print(f"RESULT {w} {impl} {key}={v:.3f}", flush=True)


async def w1(n):
    """Spawn n no-op tasks, then await all n. Returns ns per task."""
    done = 0

    async def noop():
        nonlocal done
        done += 1

    t0 = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for _ in range(n):
            tg.create_task(noop())
    dt = time.perf_counter() - t0
    assert done == n, f"W1 {impl}: only {done} of {n} tasks ran"
    return dt * 1e9 / n


async def w2(n):
    """n tasks each sleeping 50 ms concurrently. Returns wall ms."""
    done = 0

    async def sleeper():
        nonlocal done
        await asyncio.sleep(0.05)
        done += 1

    t0 = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for _ in range(n):
            tg.create_task(sleeper())
    ms = (time.perf_counter() - t0) * 1e3
    assert done == n, f"W2 {impl}: only {done} of {n} tasks woke"
    assert ms >= 49, f"W2 {impl}: 50 ms sleeps finished after {ms} ms"
    return ms


class Boom(Exception):
    pass


async def w3(n):
    """n siblings sleeping 10 s with a finally, one raising after 10 ms.
    Returns ms from the raise until the TaskGroup has raised."""
    closed = 0
    t_raise = None

    async def sibling():
        nonlocal closed
        try:
            await asyncio.sleep(10)
            raise AssertionError(f"W3 {impl}: a sibling slept its full 10 s")
        finally:
            closed += 1

    async def raiser():
        nonlocal t_raise
        await asyncio.sleep(0.01)
        t_raise = time.perf_counter()
        raise Boom()

    t0 = time.perf_counter()
    raised = False
    try:
        async with asyncio.TaskGroup() as tg:
            for _ in range(n):
                tg.create_task(sibling())
            tg.create_task(raiser())
    except* Boom:
        raised = True
    t1 = time.perf_counter()
    assert raised, f"W3 {impl}: the group did not raise"
    assert closed == n, f"W3 {impl}: only {closed} of {n} cleanups ran"
    assert t1 - t0 < 5, f"W3 {impl}: the group waited for the sleepers"
    return (t1 - t_raise) * 1e3


async def w4(n):
    """Two tasks ping-pong over two asyncio.Queue(maxsize=1); n messages
    (n/2 round trips). Returns ns per message."""
    trips = n // 2
    ping, pong = asyncio.Queue(maxsize=1), asyncio.Queue(maxsize=1)
    got = echoed = 0

    async def pinger():
        nonlocal got
        for i in range(1, trips + 1):
            await ping.put(i)
            v = await pong.get()
            if v != i:
                raise AssertionError(f"W4 {impl}: round trip {i} came back as {v}")
            got += 1

    async def ponger():
        nonlocal echoed
        total = 0
        for _ in range(trips):
            v = await ping.get()
            total += v
            await pong.put(v)
        echoed = total

    t0 = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(pinger())
        tg.create_task(ponger())
    dt = time.perf_counter() - t0
    assert got == trips and echoed == trips * (trips + 1) // 2, \
        f"W4 {impl}: not every message was delivered ({got} of {trips} round trips)"
    return dt * 1e9 / (2 * trips)


CLIENTS = 50


async def w5(trips):
    """TCP echo on 127.0.0.1: asyncio.start_server and 50 open_connection
    clients in this process, each doing `trips` sequential 64-byte round trips
    (write, drain, readexactly(64), compare). Returns wall s from the first
    connect until every client is done."""
    total = 0

    async def echo(reader, writer):
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        writer.close()

    async def client(c, port):
        nonlocal total
        msgs = [(f"client {c:02d} message {k:02d} " * 4)[:64].encode() for k in range(16)]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for i in range(trips):
            msg = msgs[i % 16]
            writer.write(msg)
            await writer.drain()
            got = await reader.readexactly(64)
            if got != msg:
                raise AssertionError(f"W5 {impl}: round trip {i} came back as {got!r}")
            total += 1
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    t0 = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for c in range(1, CLIENTS + 1):
            tg.create_task(client(c, port))
    dt = time.perf_counter() - t0
    server.close()
    await server.wait_closed()
    assert total == CLIENTS * trips, f"W5 {impl}: only {total} of {CLIENTS * trips} round trips"
    return dt


async def w6(n):
    """Run /bin/true n times with create_subprocess_exec, at most 8 at once
    (a Semaphore(8)); each exit status must be 0. Returns ms per process."""
    sem = asyncio.Semaphore(8)
    ok = 0

    async def one():
        nonlocal ok
        async with sem:
            p = await asyncio.create_subprocess_exec("/bin/true")
            code = await p.wait()
        assert code == 0, f"W6 {impl}: /bin/true exited {code}"
        ok += 1

    t0 = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for _ in range(n):
            tg.create_task(one())
    dt = time.perf_counter() - t0
    assert ok == n, f"W6 {impl}: only {ok} of {n} processes exited 0"
    return dt * 1e3 / n


# W6_HEAP_MB: that much live heap in the parent (1 MiB bytes objects)
import os
HEAP = [bytes([i % 256]) * (1 << 20) for i in range(int(os.environ.get("W6_HEAP_MB", "0")))]


def bench(fn, n, rounds):
    """Round 0 runs first in this fresh process (cold), then `rounds` warm
    rounds; returns (cold, median of the warm ones or None)."""
    samples = []
    for _ in range(rounds + 1):
        gc.collect()
        samples.append(asyncio.run(fn(n)))
    return samples[0], (statistics.median(samples[1:]) if rounds else None)


def report(w, key, cold_warm):
    cold, warm = cold_warm
    if warm is not None:
        result(w, key, warm)
    result(w, "cold_" + key, cold)


if which == "W1":
    report("W1", "ns_per_task", bench(w1, n or 100000, 5 if rounds is None else rounds))
elif which == "W2":
    report("W2", "wall_ms", bench(w2, n or 20000, 5 if rounds is None else rounds))
elif which == "W3":
    report("W3", "ms_raise_to_raised", bench(w3, n or 10000, 5 if rounds is None else rounds))
elif which == "W4":
    report("W4", "ns_per_msg", bench(w4, n or 1000000, 3 if rounds is None else rounds))
elif which == "W5":
    trips = n or 2000
    cold, wall = bench(w5, trips, 3 if rounds is None else rounds)
    report("W5", "wall_s", (cold, wall))
    if wall is not None:
        result("W5", "trips_per_s", CLIENTS * trips / wall)
    result("W5", "cold_trips_per_s", CLIENTS * trips / cold)
elif which == "W6":
    report("W6", "ms_per_proc", bench(w6, n or 400, 3 if rounds is None else rounds))
else:
    sys.exit("usage: w_asyncio.py [--uvloop] W1|W2|W3|W4|W5|W6 [n] [rounds]")
