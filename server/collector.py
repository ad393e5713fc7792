"""Python's cyclic garbage collector, set for a long-running server.

With the interpreter's defaults the collector cost the Python identity model over HTTP JSON
at concurrency 32 about a tenth of its requests/s and set its p99 latency (about 45 ms
against a p50 of 5 ms; `bench/` and docs/performance.md, change 16):

- every full collection walks every object the server keeps for its whole life (modules,
  models, configurations, the front ends) and took 40-70 ms, on whichever thread
  allocated, the event loop's included. Objects a request keeps across a young collection
  count towards the next full one, so under load they came about once a second;
- the youngest generation was collected every 700 new container objects, a few dozen
  requests' worth, which added up to about 3% of the event loop's time.

So once the models of a start are loaded the server collects once and freezes what is
alive (``gc.freeze``: later collections skip those objects), and it collects the youngest
generation every ``YOUNG_THRESHOLD`` new objects instead. Objects that die by reference
count, nearly all of a request's, are freed at once either way. After a model is loaded or
unloaded while serving, the frozen objects are released, collected (so the cycles an
unloaded model leaves are freed) and frozen again: one full collection per change. A process
whose collector is disabled (``gc.disable()``) is left as it is.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000


def tune() -> None:
    """Collect the youngest generation every ``YOUNG_THRESHOLD`` new container objects."""
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, oldest)


def settle() -> None:
    """Collect everything, then freeze what is still alive."""
    if not gc.isenabled():
        return
    gc.unfreeze()
    gc.collect()
    gc.freeze()
