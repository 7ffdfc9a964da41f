"""The tag-fix simulator: movement and device models, scenarios, load and capture.

It talks to tagwatch only through the broker, like a real tag (DESIGN 2).
"""
