"""Limits: per-caller rate and concurrency (`callers`), connection deadlines of the HTTP server
(`server`), caps on request fields (`caps`), and their settings (`config`, ``HHH_LIMITS_*``)."""
