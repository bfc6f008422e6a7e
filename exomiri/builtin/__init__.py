"""Built-in background and extraction methods, registered through the plugin hooks."""
