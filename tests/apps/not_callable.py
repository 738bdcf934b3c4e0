"""`app` exists but is not an app."""
app = 42
