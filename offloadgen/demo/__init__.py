"""`offloadgen demo`: offload made visible on a Mininet testbed.

The parts: :mod:`.checks` (prerequisites, one-line failures), :mod:`.traffic` (the host programs and their
schedule), :mod:`.track` (sampling the controller: flow states and per-path packet rates), :mod:`.report`
(throughputs, summary table, report.json), :mod:`.plot` (timeline.png) and :mod:`.run` (the orchestration
and the clean-up). Only :mod:`.run` imports Mininet, after :mod:`.checks` has said it is there.
"""
