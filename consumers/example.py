"""An example consumer: `postdate worker consumers.example:app` or `python -m consumers.example`.

Handles `Remind` commands; a reminder whose text is empty has nothing to do and exits
early, one whose text starts with "fail" fails (and is retried, then parked).
"""

from __future__ import annotations

from datetime import timedelta

from postdate import Command, Consumer, Context, RetryPolicy, Skip, run


class Remind(Command, queue="example.remind"):
    """A reminder to log: ``text`` is what to remind of."""

    text: str


app = Consumer()


@app.handler(
    Remind,
    retries=RetryPolicy(max_attempts=3, tiers=(timedelta(seconds=1), timedelta(seconds=5))),
)
async def remind(command: Remind, context: Context) -> None:
    """Log the reminder's text.

    Raises:
        Skip: the text is empty (nothing to remind).
        RuntimeError: the text starts with "fail" (to show retries, then poison).
    """
    if not command.text:
        raise Skip("nothing to remind")
    if command.text.startswith("fail"):
        raise RuntimeError(f"cannot remind {command.text!r}")
    context.log.info("reminded", text=command.text)


if __name__ == "__main__":
    run(app)
