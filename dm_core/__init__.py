"""dm_core: the dataset-condensation engine (DM, DSA, M3D, IDM, DataDAM, DDM, random, herding) and training-from-scratch evaluation.

Imports only torch, torchvision, numpy and tqdm, so it runs wherever torch runs.
"""
from .augment import DiffAugment
from .data import DATASETS, ClassStore, ImageDataset, data_root, load_dataset
from .device import make_generator, resolve_device
from .dm import DMConfig, condense_dm
from .dsa import DSAConfig, condense_dsa
from .errors import DMError
from .io import atomic_torch_save, atomic_write_bytes, atomic_write_text
from .methods import CONDENSERS, METHODS, make_set
from .nets import ConvNetSpec, build_model, reinit_
from .select import select_herding, select_random
from .synset import SyntheticSet
from .successors import (DataDAMConfig, DDMConfig, IDMConfig, M3DConfig, condense_datadam, condense_ddm,
                         condense_idm, condense_m3d)
from .train import EvalResult, TrainConfig, evaluate_accuracy, evaluate_set, train_and_test, train_model

__all__ = [
    "CONDENSERS", "DATASETS", "METHODS", "ClassStore", "ConvNetSpec", "DDMConfig", "DMConfig", "DMError", "DSAConfig",
    "DataDAMConfig", "DiffAugment", "IDMConfig", "M3DConfig", "condense_datadam", "condense_ddm", "condense_idm",
    "condense_m3d",
    "EvalResult", "ImageDataset", "SyntheticSet", "TrainConfig", "atomic_torch_save", "atomic_write_bytes",
    "atomic_write_text", "build_model", "condense_dm", "condense_dsa", "data_root", "evaluate_accuracy",
    "evaluate_set", "load_dataset", "make_generator", "make_set", "reinit_", "resolve_device", "select_herding",
    "select_random", "train_and_test", "train_model",
]
__version__ = "0.1.0"
