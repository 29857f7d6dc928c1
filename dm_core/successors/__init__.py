"""DM's successors as methods of the same engine: M3D, IDM, DataDAM and decomposed DM (docs/successors.md).

Each is DM's iteration (``engine.condense_matching``) with its own loss, so they share DM's data store,
augmentation, checkpoints, resume, precision option and provenance.
"""
from .datadam import DataDAMConfig, attention_map, condense_datadam, datadam_loss
from .ddm import DDMConfig, channel_moments, condense_ddm, gram, intra_class_diversity
from .engine import MatchingConfig, mosaic, partition_expand
from .idm import IDMConfig, ModelQueue, condense_idm, idm_loss
from .m3d import M3DConfig, condense_m3d, m3d_loss, mmd2

# method name -> (configuration, condense function)
SUCCESSORS = {
    "m3d": (M3DConfig, condense_m3d),
    "idm": (IDMConfig, condense_idm),
    "datadam": (DataDAMConfig, condense_datadam),
    "ddm": (DDMConfig, condense_ddm),
}

__all__ = ["SUCCESSORS", "DDMConfig", "DataDAMConfig", "IDMConfig", "M3DConfig", "MatchingConfig", "ModelQueue",
           "attention_map", "channel_moments", "condense_datadam", "condense_ddm", "condense_idm", "condense_m3d",
           "datadam_loss", "gram", "idm_loss", "intra_class_diversity", "m3d_loss", "mmd2", "mosaic",
           "partition_expand"]
