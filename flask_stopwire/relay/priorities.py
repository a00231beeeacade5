"""The order in which one turn of a worker's event loop serves its work: libev
priorities, highest first. gevent's own watchers (new requests, a provider's response
headers) have the default, 0.
"""

DEPARTURES = 2  # a client gone: its provider hears our FIN before anything else is served
TOKENS = 1  # the running answers' tokens: before the new work of the same turn
LANES = -2  # last, after every socket and timer: work that takes turns (relay/turns.py)
