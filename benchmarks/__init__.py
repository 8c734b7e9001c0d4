"""lens's benchmark: quality, speed, index, scale, projection and dashboard figures of a catalog, in one report.

It sits beside the library, not inside it (as timm keeps ``benchmark.py`` beside ``timm/``): it imports ``lens``,
``lens`` never imports it. Run it from the repository root with ``python -m benchmarks --out DIR [--quick]``; one
module per section (``quality``, ``throughput``, ``index``, ``scale``, ``projection``, ``dashboard``), ``run`` calls
them and writes the report, ``charts`` draws its PNGs.
"""
