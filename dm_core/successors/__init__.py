"""DM's successors as matchers of the one engine: M3D, IDM, DataDAM and decomposed DM (docs/successors.md).

Each is DM's iteration with its own loss (and IDM its own networks), so they share DM's data store, augmentation,
checkpoints, resume, sharding, precision option and provenance. Importing this package registers them.
"""
from ..engine import mosaic, partition_expand
from .datadam import DataDAMConfig, attention_map, condense_datadam, datadam_loss
from .ddm import DDMConfig, channel_moments, condense_ddm, gram, intra_class_diversity
from .idm import IDMConfig, ModelQueue, condense_idm, idm_loss
from .m3d import M3DConfig, condense_m3d, m3d_loss, mmd2

__all__ = ["DDMConfig", "DataDAMConfig", "IDMConfig", "M3DConfig", "ModelQueue", "attention_map", "channel_moments",
           "condense_datadam", "condense_ddm", "condense_idm", "condense_m3d", "datadam_loss", "gram", "idm_loss",
           "intra_class_diversity", "m3d_loss", "mmd2", "mosaic", "partition_expand"]
