"""The training child: the only package that imports torch, transformers, peft and trl.

The daemon never imports it; it runs `python -m iceburg_daemon.training --run-dir DIR` and reads the folder.
"""
