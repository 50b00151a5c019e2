"""The tutorial's runnable steps, one file each (docs/tutorial.md walks through them in order).

Each step fixes one thing the step before it gets wrong. Step 1 is also the benchmark's baseline
(bench/processes.py starts ``examples.step1_relay:app``). tests/test_tutorial.py starts every step
on 127.0.0.1 and shows each mistake happening, then fixed.
"""
