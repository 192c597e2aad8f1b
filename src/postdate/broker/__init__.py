"""Broker objects: connecting, the topology as values, declaring it, and the queue registry.
Internal: the public names are in :mod:`postdate`."""
