"""The order in which one turn of a worker's event loop serves its work: libev
priorities, highest first.

gevent's own watchers have the default, 0, below the tokens: new requests and a burst's
provider response headers, but also what reaches us as a message rather than as a client's
FIN: a stop request, a WebSocket's cancel or close frame, a stop from a sibling worker or
from Redis, and timers. A token's turn is tens of microseconds, so such a stop waits at most
for the tokens read in the same turn (docs/token-path-profile.md, seventeenth session).
"""

DEPARTURES = 2  # a client gone: its provider hears our FIN before anything else is served
TOKENS = 1  # the running answers' tokens: before the new work of the same turn
LANES = -2  # last, after every socket and timer: work that takes turns (relay/turns.py)
