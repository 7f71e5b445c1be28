"""One line per event or notification: rich and colour-coded on a terminal, plain elsewhere."""

from __future__ import annotations

from rich.text import Text

from streamcli.client.chat_records import ChatMessage
from streamcli.client.events import Event
from streamcli.client.notifications import Notification
from streamcli.terminal_text import visible
from streamcli.times import TimestampLike, invalid_time, utc_second

TYPE_STYLES = {"login": "green", "logout": "yellow", "profile_update": "cyan", "password_change": "magenta"}
SEVERITY_STYLES = {"info": "cyan", "warning": "yellow", "error": "bold red"}
SUMMARY_CHARS = 120


def _time(stamp: TimestampLike) -> str:
    """``YYYY-MM-DD HH:MM:SS.mmm`` (UTC)."""
    invalid = invalid_time(stamp)
    if invalid is not None:
        return invalid
    return f"{utc_second(stamp.seconds).replace('T', ' ')}.{stamp.nanos // 1_000_000:03d}"


def _summary(event: Event) -> str:
    if not event.has_data:
        return ""
    text = visible(event.data_text)
    return text if len(text) <= SUMMARY_CHARS else text[: SUMMARY_CHARS - 1] + "…"


def event_line(event: Event) -> Text:
    """``time  #id  user  type  data``, the type coloured."""
    kind = event.type
    line = Text()
    line.append(_time(event.timestamp), style="dim")
    line.append(f"  #{event.id:<6} ", style="dim")
    line.append(f"{visible(event.user_id):<12} ", style="bold")
    line.append(f"{kind:<15} ", style=TYPE_STYLES.get(kind, ""))
    line.append(_summary(event))
    return line


def notification_line(notification: Notification) -> Text:
    """``time  #id  [severity] topic  → recipient  title: body``."""
    severity = notification.severity
    line = Text()
    line.append(_time(notification.timestamp), style="dim")
    line.append(f"  #{notification.id:<6} ", style="dim")
    line.append(f"{severity:<7} ", style=SEVERITY_STYLES.get(severity, ""))
    line.append(f"{visible(notification.topic):<10} ", style="bold")
    line.append(f"→ {visible(notification.recipient):<10} ", style="dim")
    line.append(visible(notification.title))
    if notification.body:
        line.append(f": {visible(notification.body)}", style="dim")
    return line


def chat_line(message: ChatMessage) -> Text:
    """``time  #id  user  content`` for a room's message (``-- text`` for the server's, ``shared`` for a file)."""
    line = Text()
    if message.timestamp_ns is None:
        line.append(message.timestamp, style="dim")  # the invalid time, said as such
    else:
        seconds, nanos = divmod(message.timestamp_ns, 1_000_000_000)
        line.append(f"{utc_second(seconds).replace('T', ' ')}.{nanos // 1_000_000:03d}", style="dim")
    line.append(f"  #{message.id:<6} ", style="dim")
    content = visible(message.content)
    if message.type == "system":
        line.append(f"-- {content}", style="dim italic")
        return line
    line.append(f"{visible(message.user_id):<12} ", style="bold")
    if message.shares_file:
        line.append(f"shared {content or 'a ' + message.type} ")
        line.append(f"({visible(message.file_id)})", style="dim")
    else:
        line.append(content)
    return line
