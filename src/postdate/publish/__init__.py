"""Publishing: the :class:`~postdate.Publisher`, confirmed publishes, the envelope a command
travels in and its marshalled AMQP properties. Internal: the public names are in
:mod:`postdate`."""
