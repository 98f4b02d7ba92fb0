"""lenstune: hyperparameter optimisation of vision transformers for dark-matter substructure
classification in strong gravitational lensing images."""

__version__ = "0.1.0"
