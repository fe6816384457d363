"""headroom: persistent memory and context tools for LLM applications."""

__version__ = "0.1.0"
