"""Exceptions raised by dicom_io; each message carries the reason a user needs to act on."""


class DicomflowError(Exception):
    """Base class of every error dicom_io raises on purpose."""


class NotDicomError(DicomflowError):
    """The bytes are not a DICOM dataset (empty, foreign format, or unparseable header)."""


class HeaderError(DicomflowError):
    """A DICOM file whose header parses but holds values that cannot be interpreted."""


class NoPixelDataError(DicomflowError):
    """A readable DICOM object without (7FE0,0010) PixelData (SR, PR, KO, DICOMDIR, ...)."""


class DecodeError(DicomflowError):
    """Pixel data present but no handler could decode it (codec missing or data corrupt)."""


class PixelBombError(DicomflowError):
    """Declared pixel size exceeds the configured limit; refused before any allocation."""


class InconsistentSeriesError(DicomflowError):
    """Slices of one stack disagree (shape, dtype, samples) so they cannot form one volume."""


class ValuesDoNotFitError(InconsistentSeriesError):
    """Decoded values fall outside the volume's dtype: the stack is redone in a wider one."""


class StorageError(DicomflowError):
    """Reading or writing a URI failed (permissions, missing bucket, full disk)."""


class OutsideOutputError(DicomflowError, ValueError):
    """A URI that should lie under the output root OUT does not (another folder, bucket or scheme)."""
