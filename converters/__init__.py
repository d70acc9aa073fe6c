"""Built-in converters: one source checkpoint format per module, each a plugin of its own."""
