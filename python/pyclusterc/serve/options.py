"""The settings HTTP serving reads (one definition each; ``manager.settings`` gathers them
with the process-management ones into ``RunSettings``, and the CLI builds its flags from
them). A serving function gets the whole ``RunSettings`` and reads these attributes."""
import ipaddress

from .._lowlevel.options import Option, choice, positive_int, seconds

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def forwarded_ips(value):
    """Comma-separated IPs or networks (10.0.0.0/8), or '*'."""
    for item in value.split(","):
        item = item.strip()
        try:
            if item != "*":
                ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(f"invalid forwarded-allow-ips entry {item!r}; use IPs or networks "
                             "(10.0.0.0/8), comma-separated, or '*'") from None
    return value


OPTIONS = (
    Option("threads", None, "threads per worker: WSGI request threads (default 8); ASGI event "
           "loops, each with its own lifespan (default 1)", parse=positive_int, metavar="N",
           file_types=(int,)),
    Option("log_level", "info", "default info", parse=choice(*LOG_LEVELS), metavar="LEVEL"),
    Option("access_log", False, "log every request"),
    Option("forwarded_allow_ips", None,
           "ASGI: trust X-Forwarded-For/-Proto from these comma-separated IPs or networks, '*' "
           "for any (default $FORWARDED_ALLOW_IPS or 127.0.0.1, as uvicorn)",
           parse=forwarded_ips, metavar="IPS"),
    Option("keep_alive", 5.0, "close a keep-alive connection idle this long (default 5, uvicorn's)",
           parse=seconds, metavar="SECONDS", file_types=(int, float)),
)
