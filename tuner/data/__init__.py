"""Datasets: simulated and DeepLense-imported lensing images in one memory-mappable store.

``load_split`` / ``read_meta`` read the store, ``ensure_simulated`` makes a simulated dataset on
first use, ``import_deeplense`` converts the DeepLense folder layout. See docs/data.md.
"""

from tuner.data.deeplense import import_deeplense
from tuner.data.simulate import ensure_simulated, simulate_dataset, split_counts
from tuner.data.store import SPLITS, DatasetError, DatasetMeta, Split, load_split, read_meta

__all__ = [
    "SPLITS",
    "DatasetError",
    "DatasetMeta",
    "Split",
    "ensure_simulated",
    "import_deeplense",
    "load_split",
    "read_meta",
    "simulate_dataset",
    "split_counts",
]
