"""Parked messages: poison queues and the catch-all queue, read and moved under a lock,
and the operator's triage of them. Internal: the public names are in :mod:`postdate`."""
