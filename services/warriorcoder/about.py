"""The installed version of WarriorCoder Arena.

Usage::

    from warriorcoder.about import __version__
"""

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__"]

try:
    __version__ = version("warriorcoder")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
