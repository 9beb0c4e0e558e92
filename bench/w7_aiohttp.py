"""w7_aiohttp.py: W7 with aiohttp (Debian python3-aiohttp): `get URL N
INFLIGHT ROUNDS`, INFLIGHT workers on one ClientSession (keep-alive,
connector limit INFLIGHT)."""
import asyncio
import sys
import time

import aiohttp


async def one_round(url, n, inflight):
    left = [n]
    conn = aiohttp.TCPConnector(limit=inflight)
    async with aiohttp.ClientSession(connector=conn) as s:
        async def worker():
            while left[0] > 0:
                left[0] -= 1
                async with s.get(url) as res:
                    body = await res.read()
                    assert res.status == 200 and len(body) == 1024
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(inflight)))
        return time.perf_counter() - t0


def main():
    mode, url, n, inflight, rounds = sys.argv[1:6]
    assert mode == "get"
    r = sorted(asyncio.run(one_round(url, int(n), int(inflight)))
               for _ in range(int(rounds)))
    print("RESULT W7 aiohttp get_ms=%.1f" % (r[len(r) // 2] * 1e3))


main()
