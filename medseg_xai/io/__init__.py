"""Reading images and labels: NIfTI, NRRD / Slicer ``.seg.nrrd``, MetaImage, DICOM series,
DICOM-SEG and 2D PNG/JPEG/TIFF/BMP, each into a :class:`Volume` (array ``(C, *spatial)``,
RAS+ affine, class names where the file names its segments, a declared time axis, notes on
what was assumed). Nothing is resampled except a DICOM-SEG put on its source series' grid.
See ``docs/formats.md``.
"""

import logging

from medseg_xai.io.read import FORMATS, format_of, read_volume
from medseg_xai.io.volume import Volume, affine_from_itk

__all__ = ["FORMATS", "Volume", "affine_from_itk", "format_of", "read_volume"]

# MONAI's DICOM reader warns once per process that the optional GPU decoder (nvImageCodec) is
# absent; on CPU machines that is expected, and with a process pool it floods the console.
logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
