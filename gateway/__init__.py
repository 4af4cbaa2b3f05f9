"""smile-gateway: bridge between Inomial Smile's XML message bus and TMF622-style order systems."""

__version__ = "0.1.0"
