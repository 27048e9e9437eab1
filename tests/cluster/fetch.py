"""Run inside a lab host.

``fetch.py URL N``: GET the URL N times; print {"answers": {body: count}, "fails": n} as JSON.
``fetch.py URL loop INTERVAL``: GET it until killed, one line per request (the body, or ``FAIL <error>``),
a new connection each time, INTERVAL seconds apart.
"""

import collections
import json
import sys
import time
import urllib.request


def get(url: str) -> str:
    return urllib.request.urlopen(url, timeout=2).read().decode().strip()


if sys.argv[2] == "loop":
    while True:
        try:
            line = get(sys.argv[1])
        except Exception as e:
            line = f"FAIL {type(e).__name__}"
        print(line, flush=True)
        time.sleep(float(sys.argv[3]))

answers: collections.Counter = collections.Counter()
fails = 0
for _ in range(int(sys.argv[2])):
    try:
        answers[get(sys.argv[1])] += 1
    except Exception:
        fails += 1
print(json.dumps({"answers": answers, "fails": fails}))
