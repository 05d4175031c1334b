"""A trace made host-portable: negotiation collapsed, the host profile recorded, answers named.

The one path from a trace as recorded to a trace that compares across hosts, for a trace the
normalizer has just made and for one written in schema 1 (read, then upgraded the same way:
its answers are in its calls, so its profile can be built from them).
"""

from __future__ import annotations

from conformance.model.document import TraceDocument
from conformance.model.host_profile import HOST, build_profile
from conformance.model.host_symbols import symbolize
from conformance.model.negotiation import collapse_negotiation


def make_portable(document: TraceDocument) -> TraceDocument:
    """`document` with probes collapsed, `source: host:` holding the whole profile (the facts
    it held before and every answer in the calls), and host-derived inputs as symbols."""
    collapsed = TraceDocument(
        source=document.source,
        threads={role: collapse_negotiation(calls) for role, calls in document.threads.items()},
        path=document.path,
    )
    facts = document.source.get(HOST)
    profile = build_profile(collapsed, facts if isinstance(facts, dict) else {})
    if profile:
        collapsed.source = {**document.source, HOST: profile}
    return symbolize(collapsed)
