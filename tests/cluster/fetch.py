"""Run inside a lab host: GET a URL N times; print {"answers": {body: count}, "fails": n} as JSON."""

import collections
import json
import sys
import urllib.request

answers: collections.Counter = collections.Counter()
fails = 0
for _ in range(int(sys.argv[2])):
    try:
        answers[urllib.request.urlopen(sys.argv[1], timeout=2).read().decode().strip()] += 1
    except Exception:
        fails += 1
print(json.dumps({"answers": answers, "fails": fails}))
