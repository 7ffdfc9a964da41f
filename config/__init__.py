"""The shipped examples, installed as the package `tagwatch.examples` (pyproject.toml).

The example configuration, the example cases (cases/) and the simulator's
scenarios (scenarios/). Code finds them with `tagwatch.shipped.example(...)`.
"""
