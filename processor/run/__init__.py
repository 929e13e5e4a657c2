"""run/: the engine and the run around it. ``engine`` (wiring, stop, drain), ``admission``
(what goes next and when, on an injected clock), ``attempts`` (one attempt; the policy's
action carried out), ``policy`` (the pure ``decide()``), ``retry`` (backoff), ``circuit`` and
``outage`` (the server is down), ``keys`` (the key pool), ``outcomes`` (records),
``config`` / ``parts`` / ``runner`` (a whole job from a file), ``pipeline`` (records as an
async iterator), ``packing`` / ``unpacking`` (``--pack``: many lines in one request, an
answer per line), ``events`` (what the engine tells an observer) and ``observer`` (the run
log around a run)."""
