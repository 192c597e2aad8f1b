"""Benchmarks (not tests): ``python -m bench.publish``, ``python -m bench.consume``.

Each writes its figures to ``bench/results/<name>.json``, as ratios against a raw aio-pika
baseline measured in the same run.
"""
