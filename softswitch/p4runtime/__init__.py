"""softswitch's P4Runtime side: the P4Info index, request validation and translation, arbitration-aware service.

The gRPC service itself lives in `softswitch.server`; this package holds what does not need gRPC: the P4Info
index (`schema`), and the translation between P4Runtime messages and the dataplane's entries (`codec`), both
validating requests the way a P4Runtime server must (ids, widths, canonical byte strings).
"""
