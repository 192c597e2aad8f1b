"""How a delay travels: the TTL + dead-letter ladder, the delayed-message plugin, and the
routing that picks the hops for a due time. Internal: the public names are in :mod:`postdate`."""
