"""dm_core: the dataset-condensation engine and training-from-scratch evaluation.

Methods (``list_methods()``): random and herding selection; DM, DSA and DM's successors M3D, IDM, DataDAM and
decomposed DM, every one of which learns its images in the one engine (``dm_core.engine``). Networks
(``list_models()``): the ConvNet family of the 720-architecture NAS space and AlexNet, VGG-11 and ResNet-18.
Needs only torch, torchvision, numpy and tqdm, so it runs wherever torch runs.
"""
__version__ = "0.2.0"  # the one place the version is written (pyproject.toml reads it)

# First, before torch loads: importing it arms a command's one-line Ctrl-C meanwhile (dm_core/startup.py).
from . import startup  # noqa: F401

# Importing a method's module registers it (random, herding, DM, DSA and DM's successors).
from .augment import DiffAugment
from .data import DATASETS, ClassStore, ImageDataset, data_root, load_dataset
from .device import make_generator, resolve_device
from .dm import DMConfig, MatchingConfig, condense_dm
from .dsa import DSAConfig, condense_dsa
from .engine import LearnConfig, Matcher, condense
from .errors import DMError
from .io import atomic_torch_save, atomic_write_bytes, atomic_write_text
from .many import JobResult, TrainJob, prepare_workers, train_many
from .methods import make_set
from .nets import ConvNetSpec, build_model, list_models, register_model, reinit_
from .registry import Method, get_method, list_methods, register_method
from .select import HerdingConfig, RandomConfig, select_herding, select_random
from .successors import (
                         DataDAMConfig,
                         DDMConfig,
                         IDMConfig,
                         M3DConfig,
                         condense_datadam,
                         condense_ddm,
                         condense_idm,
                         condense_m3d,
)
from .synset import SyntheticSet
from .train import EvalResult, TrainConfig, evaluate_accuracy, evaluate_set, train_and_test, train_model

__all__ = [
    "DATASETS", "ClassStore", "ConvNetSpec", "DDMConfig", "DMConfig", "DMError", "DSAConfig", "DataDAMConfig",
    "DiffAugment", "EvalResult", "HerdingConfig", "IDMConfig", "ImageDataset", "JobResult", "LearnConfig",
    "M3DConfig", "Matcher", "MatchingConfig",
    "Method", "RandomConfig", "SyntheticSet", "TrainConfig", "TrainJob", "atomic_torch_save", "atomic_write_bytes",
    "atomic_write_text", "build_model", "condense", "condense_datadam", "condense_ddm", "condense_dm", "condense_dsa",
    "condense_idm", "condense_m3d", "data_root", "evaluate_accuracy", "evaluate_set", "get_method", "list_methods",
    "list_models", "load_dataset", "make_generator", "make_set", "prepare_workers", "register_method",
    "register_model", "reinit_", "resolve_device", "select_herding", "select_random", "train_and_test", "train_many",
    "train_model",
]
