"""vlm3d-ttg: vision-language test-time guidance for native 3D diffusion."""
__version__ = "0.1.0"
from .models import load_shape_pipeline, load_vlm
