"""The header pass over listed files: each file's header, or the instance row that says why it has none.

Beam-free: `transforms.headers.ReadHeaderFn` maps it per file, or (local runs) per batch of files in a
forked process of `dicom_io.workers.Pool`, so batches take one picklable argument.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Union

from dicom_io import schemas, storage
from dicom_io.deid import DeidSettings, deidentifier_for
from dicom_io.errors import DicomflowError, NoPixelDataError
from dicom_io.header import read_header

Listed = tuple[str, Union[int, None], Union[str, None]]  # (uri, size if listed, manifest label)
Outcome = tuple[str, Any]  # ("header", InstanceHeader) | (schemas.SKIPPED or schemas.FAILED, instance row)
HEADER = "header"

def read_listed(listed: Listed, deid: DeidSettings | None = None) -> Outcome:
    """One listed file -> ("header", its InstanceHeader, de-identified when asked) or (status, row)."""
    uri, size, label = listed
    try:
        size = storage.size_of(uri) if size is None else size
        with storage.open_source(uri) as fp:  # .dcm.gz and other compressed files read transparently
            header = read_header(fp, uri, size)
    except NoPixelDataError as exc:
        return schemas.SKIPPED, schemas.instance_row(uri, schemas.SKIPPED, str(exc))
    except FileNotFoundError as exc:
        return schemas.FAILED, schemas.instance_row(uri, schemas.FAILED, f"source disappeared: {exc}")
    except (DicomflowError, OSError) as exc:
        return schemas.FAILED, schemas.instance_row(uri, schemas.FAILED, str(exc))
    header = dataclasses.replace(header, label=label) if label is not None else header
    return HEADER, (deidentifier_for(deid).header(header) if deid else header)


def read_batch(task: tuple[list[Listed], DeidSettings | None]) -> list[Outcome]:
    """read_listed over a batch of files (one task of a worker process)."""
    batch, deid = task
    return [read_listed(listed, deid) for listed in batch]
