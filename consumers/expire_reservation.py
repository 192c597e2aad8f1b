"""Expire in-store pickup reservations: ``python -m consumers.expire_reservation`` (or
``postdate worker consumers.expire_reservation:app``), the reference service's worker
(:mod:`orders.worker`, where its settings and start-up are documented) as run by
consumers/supervisord.conf."""

from __future__ import annotations

from orders.worker import app, main

__all__ = ["app", "main"]

if __name__ == "__main__":
    main()
