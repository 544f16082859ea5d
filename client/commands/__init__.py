"""The command-line layer: flags, tables, output formats and HTML pages over the client's libraries.

``rank`` and ``dedup`` are the commands (``python client/rank.py``, ``imgsim-rank``, ...);
``options`` holds what they share, ``tables`` their DataFrames, ``html_report`` their pages.
"""
