"""Reusable environments (``cascade.environments``): multi-turn machinery shared by domain plugins,
such as tool execution and sandboxed code runs. Domain-specific environments live in their plugins."""
