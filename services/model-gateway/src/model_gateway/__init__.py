"""Model gateway: registry aliases to S3 artifact URIs, and audited alias moves."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("model-gateway")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
