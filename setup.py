"""dicomflow: Apache Beam pipelines that turn DICOM archives into ML-ready datasets.

Ships the three top-level packages so `--setup_file ./setup.py` works on Dataflow workers.
Versions are pinned once, in requirements.txt.
"""

import pathlib

from setuptools import setup

HERE = pathlib.Path(__file__).parent


def _requirements() -> list[str]:
    lines = (HERE / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith(("#", "-"))]


setup(
    name="dicomflow",
    version="0.1.0",
    description="DICOM archives to Zarr volumes, tables and previews with Apache Beam",
    python_requires=">=3.11,<3.12",
    packages=["dicom_io", "transforms", "pipelines"],
    install_requires=_requirements(),
    # Training loaders (dicom_io.readers.VolumeDataset needs torch only for DataLoader; dicom_io.monai_reader MONAI).
    extras_require={"ml": ["torch==2.13.0", "monai==1.6.1"]},
    entry_points={"console_scripts": ["dicomflow=pipelines.__main__:main",
                                      "dicomflow-convert=pipelines.convert:main",
                                      "dicomflow-manifest=pipelines.manifest:main",
                                      "dicomflow-verify=pipelines.verify:main",
                                      "dicomflow-dataset=pipelines.dataset:main",
                                      "dicomflow-export=pipelines.export:main",
                                      "dicomflow-aggregate=pipelines.aggregate:main"]},
)
