"""kdlib: multi-task, multi-scale contrastive knowledge distillation for spleen CT segmentation.

A reproduction of Biswas (2024). Modules: `data`, `models`, `losses`, `metrics`, `train`,
`tables`, `figures`, `stats`, `runner`. Run `python -m kdlib --help` for the command line.
"""
__version__ = "0.1.0"
