"""Consuming: the :class:`~postdate.Consumer` app, the worker process, one delivery's
dispatch, the pure settle decision, retry policies and coalesced acks. Internal: the
public names are in :mod:`postdate`."""
