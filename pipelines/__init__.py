"""One module per job (convert, manifest, verify, dataset, export, aggregate), each `run(argv)` + an options
class + `python -m pipelines.NAME`; `dicomflow JOB` runs any of them. The only place that reads PipelineOptions."""
