"""overrided: per-board boot artifacts (FIT, initrd, barebox devboot scripts) over TFTP and HTTP."""

__version__ = "0.1.0"
