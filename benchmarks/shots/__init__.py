"""The shot-boundary benchmark: spliced videos with exact ground truth, built from a seed.

``build.py`` splices single-shot spans of the real videos in ``../shared/data`` and ``curate.synth`` renders
into 640x360 30 fps H.264 files with every transition frame known; ``score.py`` matches detected scenes against
that truth; ``python -m benchmarks.shots`` builds (cached), runs our detector, the previous one (git main) and
the ``scenedetect`` CLI, and prints F1 and speed. Sources are split into a dev part (tuning) and a test part
(reported) by source file: see ``build.SPLIT``.
"""
