"""The states a step result and a run take, named once for the whole package.

A step shows ``pending``, ``running``, ``cached``, ``passed``, ``flagged``, ``failed`` or
``skipped``; a reviewer's decision turns a result ``approved``, ``edited`` or ``rejected``; a run
that stopped early is ``interrupted``. The store (``store/_base``) re-exports these; everywhere
else names them by these constants, never as string literals (tests/test_layout.py checks it).
"""

from __future__ import annotations

PENDING, RUNNING, CACHED = "pending", "running", "cached"
PASSED, FLAGGED, FAILED, SKIPPED = "passed", "flagged", "failed", "skipped"
APPROVED, EDITED, REJECTED = "approved", "edited", "rejected"
INTERRUPTED = "interrupted"

#: what a step shows in the graph, the timeline and a summary (`_types.State`)
STEP_STATES = (PENDING, RUNNING, CACHED, PASSED, FLAGGED, FAILED, SKIPPED)
#: every state name: the step states, review decisions and run statuses
ALL_STATES = (*STEP_STATES, APPROVED, EDITED, REJECTED, INTERRUPTED)
#: states whose output the cache serves (a flagged output is usable until someone decides)
SERVED = (PASSED, FLAGGED, APPROVED, EDITED)
#: states that count as accepted in the end (the report's final yield, ``history()``)
ACCEPTED = (PASSED, APPROVED, EDITED)
#: states a fresh step execution is counted in by the report
COUNTED = (PASSED, FLAGGED, FAILED, APPROVED, EDITED, REJECTED)
#: states of a result that was flagged when it ran: still waiting, or decided by a reviewer since
WAS_FLAGGED = (FLAGGED, APPROVED, EDITED, REJECTED)
#: run statuses that mean the run did not finish
UNFINISHED = (RUNNING, INTERRUPTED)
