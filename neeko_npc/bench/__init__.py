"""`neeko-npc bench`: speed and memory of the daemon beside baselines measured in the same run.

stats.py holds the summaries, targets.py the two ways to send a line (in-process engine or a
running daemon), speed.py the timed sections, baselines.py the approaches we compare against,
memory.py the daemon's resident memory by role count, report.py the table, JSON and plot.
run.py ties them together.
"""
