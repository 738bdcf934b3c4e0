"""A small EventEmitter with Node's on/once/off/emit semantics."""

__all__ = ["EventEmitter"]


class EventEmitter:
    """Listeners run synchronously in registration order; ``once`` listeners are
    removed before they run. An exception in a listener propagates to ``emit``."""

    def __init__(self):
        self._event_listeners = {}

    def on(self, event, callback):
        if not callable(callback):
            raise TypeError(f"listener for {event!r} must be callable, not {type(callback).__name__}")
        self._event_listeners.setdefault(event, []).append((callback, False))
        return self

    def once(self, event, callback):
        if not callable(callback):
            raise TypeError(f"listener for {event!r} must be callable, not {type(callback).__name__}")
        self._event_listeners.setdefault(event, []).append((callback, True))
        return self

    def off(self, event, callback):
        entries = self._event_listeners.get(event, [])
        for i, (cb, _) in enumerate(entries):
            if cb == callback:
                del entries[i]
                break
        return self

    def listener_count(self, event):
        return len(self._event_listeners.get(event, ()))

    def emit(self, event, *args):
        entries = self._event_listeners.get(event)
        if not entries:
            return False
        for entry in list(entries):
            callback, once = entry
            if once:
                try:
                    entries.remove(entry)
                except ValueError:
                    continue
            callback(*args)
        return True
