"""offloadgen: generate a P4 flow-offload target from a profile, and run it as a testbed."""

__version__ = "0.1.0"
