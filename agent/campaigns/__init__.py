"""Outbound calls and campaigns: one call (`POST /calls`, `voice-agent dial`) or a list of numbers dialled under
rules (calling windows, retries with back-off, a do-not-call list, concurrency and rate limits), with all state in
the database so any replica, or a restarted one, carries a campaign on without dialling a number twice."""
