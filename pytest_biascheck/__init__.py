"""biascheck: bias checks for vision models as pytest items."""

__version__ = "0.1.0"
