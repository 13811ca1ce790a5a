"""The model surface of the server: everything ``service/`` may import from ``model/``.

``service/`` imports this module and no other model module, so the HTTP shell depends on
the runtime (artifact loading, decoding, the Inspector and its verdict) and never on the
training stack.
"""

from model.artifact.manifest import Manifest, RollbackError
from model.artifact.source import ArtifactSource, is_remote, open_source, rollback
from model.artifact.store import ArtifactError, list_categories, read_manifest, validate_category, version_manifest
from model.method.calibration import Thresholds
from model.reporting.overlays import colorize, overlay
from model.runtime.imageio import ImageDecodeError, allow_decoding_up_to, decode_image, resize_rgb
from model.runtime.inspector import Inspector
from model.runtime.process import configure_device, gpu_memory_bytes, set_torch_threads
from model.runtime.verdict import MAX_REGIONS, InspectionResult, NonFiniteResult, Region, Verdict

__all__ = [
    "ArtifactError",
    "ArtifactSource",
    "allow_decoding_up_to",
    "ImageDecodeError",
    "MAX_REGIONS",
    "InspectionResult",
    "Inspector",
    "Manifest",
    "NonFiniteResult",
    "Region",
    "RollbackError",
    "Thresholds",
    "Verdict",
    "colorize",
    "configure_device",
    "decode_image",
    "gpu_memory_bytes",
    "is_remote",
    "list_categories",
    "open_source",
    "overlay",
    "read_manifest",
    "resize_rgb",
    "rollback",
    "set_torch_threads",
    "validate_category",
    "version_manifest",
]
