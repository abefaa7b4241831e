"""showerformer: transformer-based machine learning for calorimeter showers."""

__version__ = "0.1.0"

__all__ = ["__version__"]
