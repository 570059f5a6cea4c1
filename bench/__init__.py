"""framebus benchmarks: ``make bench`` or ``python -m bench.run [NAME ...]``.

Every benchmark measures its baseline in the same run on the same machine and reports a
ratio, because the machines these run on are small (2 cores) and shared. See README.md,
section "Benchmarks", for what each one measures and the latest figures.
"""
