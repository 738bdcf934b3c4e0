"""An app module whose import fails (the CLI must show this traceback once)."""

raise RuntimeError("broken_import: deliberate failure at import time")
