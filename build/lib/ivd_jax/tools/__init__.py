"""Command-line tools: converters and demos."""
