"""One definition per setting: an ``Option`` names its flag, its file key, its type, its
default, its parser and its help, and that one definition drives argparse, the
``[tool.pyclusterc]`` / ``pyclusterc.toml`` reader and validation alike.

Each layer declares the options it reads (``serve/options.py`` for HTTP serving,
``manager/settings.py`` for process management); the manager gathers them into one frozen
``RunSettings`` value. Values in files parse like flags: ``"3s"``, ``"1600ms"``, ``"300M"``.
"""
import dataclasses
import math
from typing import Any, Callable, Optional

__all__ = ["Option", "OptionError", "seconds", "size", "count", "positive_int", "choice",
           "text", "boolean", "integer_range"]


class OptionError(ValueError):
    """A bad value: one line naming the setting and what it accepts."""


@dataclasses.dataclass(frozen=True)
class Option:
    """A setting. ``parse`` turns text (a flag's argument, or a string in a file) into the
    value, raising ``ValueError("expected ...")``; a file may also give the value's native
    TOML type when it is one of ``file_types``, and it is then checked by ``parse`` too."""

    name: str                          # the RunSettings attribute and the file key (dashes or underscores)
    default: Any
    help: str
    parse: Optional[Callable[[Any], Any]] = None   # None: a boolean switch
    flags: tuple = ()                  # () -> ("--name-with-dashes",)
    metavar: Optional[str] = None
    repeat: bool = False               # a list: the flag may be given many times
    group: Optional[str] = None        # the --help section
    file_types: tuple = (str,)
    negatable: bool = False            # a switch that also has --no-NAME

    @property
    def is_switch(self):
        return self.parse is None

    @property
    def dest_flags(self):
        return self.flags or ("--" + self.name.replace("_", "-"),)

    @property
    def display(self):
        return self.dest_flags[-1] if self.dest_flags[-1].startswith("--") else self.dest_flags[0]

    def convert(self, value, where="setting"):
        """The value this option stores for ``value`` (text or a native file value)."""
        if self.is_switch:
            if isinstance(value, bool):
                return value
            raise OptionError(f"invalid {where} {self.name.replace('_', '-')!r}: expected true or false, "
                              f"got {value!r}")
        if self.repeat:
            items = value if isinstance(value, (list, tuple)) else [value]
            return tuple(self._convert_one(item, where) for item in items)
        return self._convert_one(value, where)

    def _convert_one(self, value, where):
        if isinstance(value, bool) or not isinstance(value, self.file_types + (str,)):
            raise OptionError(f"invalid {where} {self.name.replace('_', '-')!r}: wrong type "
                              f"{type(value).__name__} ({value!r})")
        try:
            return self.parse(value)
        except (ValueError, TypeError) as e:
            raise OptionError(self.explain(value, e, where)) from None

    def explain(self, value, error, where="setting"):
        """One line: what was wrong and what is accepted. A parser's own message that
        already starts with "invalid" is complete as it is."""
        reason = str(error)
        name = self.name.replace("_", "-")
        if reason.startswith("invalid choice"):  # names the value, not the setting
            return f"invalid {where} {name}: {reason}"
        if reason.startswith("invalid"):
            return reason if where == "setting" else f"{where.rsplit(':', 1)[0]}: {reason}"
        return f"invalid {where} {name} {value!r}: {reason}"


# ---- parsers: each takes a flag's text (or a file's native value) ------------------------

def seconds(value):
    """1.6, "1.6", "1.6s", "1600ms" -> 1.6 (0 to 86400)."""
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        text = value.strip()
        try:
            number = float(text[:-2]) / 1000 if text.endswith("ms") else float(text.removesuffix("s"))
        except ValueError:
            raise ValueError("expected seconds, e.g. 1.6, 3s or 1600ms") from None
    if not (0 <= number < 86400) or math.isnan(number):
        raise ValueError("expected 0 to 86400 seconds")
    return number


_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def size(value):
    """PM2's sizes: 1024 (bytes), "512K", "300M", "1G" (powers of 1024) -> bytes > 0."""
    if isinstance(value, int):
        number, unit = value, ""
    else:
        upper = value.strip().upper().removesuffix("IB").removesuffix("B")
        number, unit = (upper[:-1], upper[-1]) if upper[-1:].isalpha() else (upper, "")
        if unit not in _SIZE_UNITS or not number.replace(".", "", 1).isdigit():
            raise ValueError("expected a size like 300M, 1G, 512K or a number of bytes")
        number = float(number)
    if number <= 0:
        raise ValueError("expected a size above 0")
    return int(number * _SIZE_UNITS[unit])


def count(value):
    """A whole number >= 0."""
    if isinstance(value, int):
        number = value
    elif value.strip().isdigit():
        number = int(value)
    else:
        raise ValueError("expected a whole number >= 0")
    if number < 0:
        raise ValueError("expected a whole number >= 0")
    return number


def positive_int(value):
    number = count(value)
    if number < 1:
        raise ValueError("expected a positive integer")
    return number


def integer_range(low, high):
    def parse(value):
        number = count(value)
        if not low <= number <= high:
            raise ValueError(f"expected a whole number from {low} to {high}")
        return number
    parse.__doc__ = f"A whole number from {low} to {high}."
    return parse


def choice(*choices):
    def parse(value):
        if value not in choices:
            raise ValueError(f"invalid choice: {value!r} (use one of {', '.join(choices)})")
        return value
    parse.choices = choices
    return parse


def text(value):
    if "\0" in value:
        raise ValueError("expected text without NUL bytes")
    return value


def boolean(value):
    """For values in files and environment: true/false, yes/no, 1/0."""
    if isinstance(value, bool):
        return value
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")
