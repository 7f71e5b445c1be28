"""``streamcli notify send``: raise a notification."""

from __future__ import annotations

from typing import Annotated

import typer

from streamcli.cli.environment import get_env
from streamcli.errors import UsageError

notify_app = typer.Typer(
    help="Raise notifications.",
    epilog="Examples:\n\n  streamcli notify send --to alice --topic deploy --title 'v2 is live'",
    no_args_is_help=True,
    rich_markup_mode="rich",
)


@notify_app.command("send")
def send(
    ctx: typer.Context,
    to: Annotated[str, typer.Option("--to", help="Recipient user; '*' for everyone.")],
    topic: Annotated[str, typer.Option(help="Topic, e.g. deploy, files.")],
    title: Annotated[str, typer.Option(help="One-line summary.")],
    body: Annotated[str, typer.Option(help="Longer text.")] = "",
    severity: Annotated[str, typer.Option(help="info, warning or error.")] = "info",
    attributes: Annotated[
        list[str] | None,
        typer.Option("--attr", show_default=False, help="KEY=VALUE detail for machines (repeatable)."),
    ] = None,
) -> None:
    """Raise one notification; subscribers of the recipient see it live.

    Prints its id ([cyan]--json[/cyan]: the whole notification).

    Examples:

      streamcli notify send --to alice --topic deploy --title 'v2 is live'

      streamcli notify send --to '*' --topic maintenance --title 'restart at 22:00' --severity warning
    """
    from streamcli.client.notifications import SEVERITIES, send_notification

    env = get_env(ctx)
    details = {}
    for item in attributes or []:
        key, separator, value = item.partition("=")
        if not separator or not key:
            raise UsageError(f"--attr {item!r}: expected KEY=VALUE")
        details[key] = value
    level = SEVERITIES.parse(severity)
    notification = env.run(
        lambda conn: send_notification(
            conn,
            recipient=to,
            topic=topic,
            title=title,
            body=body,
            severity=level,  # type: ignore[arg-type]
            attributes=details,
        )
    )
    if env.json:
        env.emit_json(notification.to_json())
    else:
        env.stdout.write(f"sent notification {notification.id}\n")


def register(app: typer.Typer) -> None:
    """Add the ``notify`` group to the tree."""
    app.add_typer(notify_app, name="notify")
